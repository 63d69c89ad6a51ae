"""Safety: everything that judges input from outside before it is unpacked, deserialised or run.

Zips of class folders (paths, links, bombs), `.h5` model files (Lambda layers, stored code, custom layers,
hub handles a visitor may not name, weights kept outside the file or declared larger than it stores) and
SavedModel backbones (only a feature extractor's operations) are checked here; pages and the CLI call these,
never around them.
"""
