"""What training (`ncflow`) and the analysis (`analysis`) share, torch-free: the names written to MLflow, the run's
parameters, the tracking store's environment and one run's dynamics figure."""
