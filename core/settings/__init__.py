"""Settings: the lowest layer, imported by everything and importing nothing of the Lab's.

Experiment configs (frozen dataclasses), deployment presets (hosting rules as data), where caches and runs
live, the article's published figures, and the Lab's own error types.
"""
