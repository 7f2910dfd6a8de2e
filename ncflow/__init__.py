"""ncflow: neural-collapse dynamics experiments tracked in MLflow."""

__version__ = "0.1.0"
