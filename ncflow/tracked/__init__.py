"""One training run in MLflow: opening or adopting it, training it into its record, its files and messages, resuming."""
