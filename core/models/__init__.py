"""Models: the article's two architectures built with tf_keras, hub handles, and distribution strategies."""
