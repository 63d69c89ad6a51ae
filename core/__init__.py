"""Transfer Learning Lab core: data, models, training, run directories and prediction (no UI)."""
import os

__version__ = "0.2.0"  # `python -m core --version`; raised with each change to run folders or the CLI

# TensorFlow's C++ start-up chatter (CUDA probing, CPU feature notes) is noise for users of the Lab.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
