"""Model-from-code entry files: MLflow executes one of these to rebuild a registered model."""
