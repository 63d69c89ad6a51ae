"""Data: where images come from and how they reach a model.

Dataset sources (`tfds:`, `folder:`) and the article's tf.data pipeline, safe image decoding, the offline
demo dataset and backbones, and the fast check of whether the network can be reached.
"""
