"""What the pages are built from, none of it a page itself: every session key, declared once with whether it
persists (session_keys); a session's life across runs and reloads (session); what every page shares, the
sidebar among it (common); the Experiments page's sections (results, run_details, training_panel) and its
time estimates (estimates).

The pages in app_pages/ import these; nothing here imports a page.
"""
