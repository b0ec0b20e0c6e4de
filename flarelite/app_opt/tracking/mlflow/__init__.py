"""MLflow tracking: MLflowReceiver (mlflow_receiver); needs ``mlflow``."""
