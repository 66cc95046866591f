"""Training: tf.data inputs, augmentation ops, the fit loop."""
