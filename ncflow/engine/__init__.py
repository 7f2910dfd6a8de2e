"""Training without MLflow: the configuration, data, models, the epoch loop and packs of runs trained together."""
