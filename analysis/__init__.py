"""Read an MLflow tracking store and build the paper's tables and figures (never imports torch)."""
