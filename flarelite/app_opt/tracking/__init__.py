"""Experiment tracking receivers and writers: tb/ (TensorBoard) and mlflow/ (MLflow), each an optional extra."""
