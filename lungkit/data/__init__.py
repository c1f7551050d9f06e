"""Data: image loading, dataset download, the phantom generator and tf.data pipelines."""
