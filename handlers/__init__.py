"""The TorchServe handler of the ``stars`` model and its settings (``model-config.yaml``)."""

# Where a .mar keeps the saved model (save_artifacts folder), relative to the extracted archive.
MODEL_SUBDIR = "model"
# Where a .mar keeps the run's records (metrics.json, config.json, numerics.json).
RUN_SUBDIR = "run"
