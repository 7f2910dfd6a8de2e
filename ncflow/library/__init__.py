"""ncflow as a library: neural collapse of any PyTorch model — feature hooks, a monitor that logs to MLflow, and
Lightning and Hugging Face Trainer callbacks (docs/library.md)."""
