"""The `ncflow` command line (click): parsing, one option per RunConfig field, the MLproject generator."""
