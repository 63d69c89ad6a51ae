"""What the pages are built from, none of it a page itself: what every page shares (common), the Experiments
page's sections (results, run_details, training_panel) and its time estimates (estimates).

The pages in app_pages/ import these; nothing here imports a page.
"""
