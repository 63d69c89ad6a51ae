"""Safety: judging input from outside before it is unpacked, deserialised or run.

Zips (paths, links, bombs), `.h5` model files (stored code, custom layers, hub handles, weights kept outside
the file or declared larger than it stores) and SavedModel backbones (only a feature extractor's operations).
"""
