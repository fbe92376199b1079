"""The TorchServe handler of the ``stars`` model and its settings (``model-config.yaml``)."""

# Where a .mar keeps the saved model (save_artifacts folder), relative to the extracted archive.
MODEL_SUBDIR = "model"
