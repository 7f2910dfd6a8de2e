"""Sweeps over Optuna storage: grids, the coordinating process, workers, trials, liveness and `ncflow reproduce`."""
