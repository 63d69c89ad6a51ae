"""Safety: everything that judges input from outside before it is unpacked, deserialised or run.

Zips of class folders (paths, links, bombs) and `.h5` model files (Lambda layers, stored code, custom
layers, hub handles a visitor may not name) are checked here; pages and the CLI call these, never around them.
"""
