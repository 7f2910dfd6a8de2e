"""`python -m ncflow.cli`: the `ncflow` command."""

from ncflow.cli.main import main

main()
