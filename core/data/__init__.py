"""Data: where images come from and how they reach a model.

Dataset sources (`tfds:`, `folder:`) and the article's tf.data pipeline, TFDS downloads (one at a time, in
a worker process, with progress), safe image decoding, the offline demo dataset and backbones, and the fast
check of whether the download hosts can be reached.
"""
