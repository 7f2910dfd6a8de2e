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


if __name__ == "__main__":
    main()
