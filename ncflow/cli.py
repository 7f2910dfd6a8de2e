"""The `ncflow` command line: `ncflow train` (one condition) and `ncflow sweep` (a named grid)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable

import click

from ncflow.config import PRESETS, ConfigError, RunConfig, build_config, field_help, format_value


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One `--field-name` option per RunConfig field, help text from the field's comment.

    Options default to None (unset), so the resolution defaults → preset → given options holds.
    """
    help_texts = field_help()
    for config_field in reversed(fields(RunConfig)):
        default_text = format_value(config_field.default) or "''"
        command = click.option(
            option_name(config_field.name),
            config_field.name,
            type=str,
            default=None,
            metavar="VALUE",
            help=f"{help_texts[config_field.name]} [default: {default_text}]",
        )(command)
    return command


def config_from_options(preset: str | None, options: dict[str, str | None]) -> RunConfig:
    given = {name: value for name, value in options.items() if value is not None}
    try:
        return build_config(preset, given)
    except ConfigError as error:
        raise click.UsageError(str(error)) from None


@click.group()
@click.version_option(package_name="ncflow")
def main() -> None:
    """Neural-collapse dynamics experiments, tracked in MLflow."""


@main.command()
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default=None,
    help="Start from the paper's settings; options given explicitly override it.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--resume",
    "resume_run_id",
    metavar="RUN_ID",
    default=None,
    help="Continue a FAILED or KILLED run from its checkpoints/last.pt (its own params; --tracking-uri applies).",
)
@config_options
def train(preset: str | None, quiet: bool, resume_run_id: str | None, **options: str | None) -> None:
    """Train one condition (Phase 1 CE → Phase 2 MSE) and log every epoch's collapse metrics to MLflow."""
    from ncflow import train as training  # torch loads only when training

    config = config_from_options(preset, options)
    try:
        if resume_run_id:
            result = training.resume(resume_run_id, tracking_uri=config.tracking_uri, progress=not quiet)
        else:
            result = training.train(config, progress=not quiet)
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    t_nc = "never" if result.t_nc is None else str(result.t_nc)
    fn_star = "-" if result.fn_star is None else f"{result.fn_star:.4f}"
    click.echo(f"run {result.run_id}: {result.status}, T_NC={t_nc}, fn*={fn_star}")


@main.command()
@click.argument("name", required=False)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes on this machine (the cores are split between them).")
@click.option("--storage", default=None, metavar="URL|PATH", help="Optuna storage: a journal file (default optuna.journal), sqlite:///FILE, or postgresql://… for many machines.")
@click.option("--dry-run", is_flag=True, help="List every grid point and whether it is done, running, failed or to do; train nothing.")
@click.option("--dataset", default=None, help="Data set for every point (e.g. mnist-5k); `none` keeps the sweep's.")
@click.option("--seeds", default=None, metavar="0,1,2", help="Seeds (a sweep dimension); `none` keeps the sweep's.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Pin a RunConfig field for every point (repeatable, or comma-joined: phase1_epochs=3,phase2_epochs=5).")
@click.option("--spec", type=click.Path(exists=True, dir_okay=False), default=None, help="A YAML or JSON sweep: name, preset, fixed, grid, seeds.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default).")
@click.option("--experiment", default=None, help="MLflow experiment (default: the MLFLOW_RUN_ID run's, else ncflow).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def sweep(
    name: str | None,
    workers: int,
    storage: str | None,
    dry_run: bool,
    dataset: str | None,
    seeds: str | None,
    settings: tuple[str, ...],
    spec: str | None,
    tracking_uri: str | None,
    experiment: str | None,
    quiet: bool,
) -> None:
    """Run the named sweep NAME (depth, activation, weight-decay, width, grid, intervention, protocol) exactly once per point."""
    from ncflow import sweeps
    from ncflow.sweep_workers import storage_kind, storage_url

    try:
        definition = sweeps.with_seeds(sweeps.lookup_sweep(name, spec), sweeps.parse_seeds(seeds))
        overrides = sweeps.parse_settings(settings)
        if dataset is not None and dataset.strip().lower() != "none":
            overrides["dataset"] = dataset
        uri = sweeps.resolve_tracking(tracking_uri)
        overrides["experiment"] = experiment or sweeps.default_experiment(uri)
        overrides["tracking_uri"] = uri
        points = sweeps.resolve_points(definition, overrides)
        run = sweeps.SweepRun(definition, overrides, storage_url(storage), uri, overrides["experiment"], workers, not quiet)
        storage_kind(run.storage)
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    if dry_run:
        click.echo(sweeps.dry_run(run, points))
        return
    states = sweeps.run_sweep(run, points)
    click.echo(f"sweep {definition.name}: " + sweeps.counts_line(states))
    unfinished = [s for s in states if s.status != "done"]
    if unfinished:
        raise click.ClickException(f"{len(unfinished)} point(s) not done; run the same command again to retry them")

if __name__ == "__main__":
    main()
