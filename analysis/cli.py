"""`ncflow-analysis`: read the tracking store and write the paper's tables, figures and a report.

    ncflow-analysis runs    --tracking-uri http://host:5000 --sweep depth
    ncflow-analysis tables  --out report --format md,csv
    ncflow-analysis figures --out report --format png
    ncflow-analysis report  --out report --log
    ncflow-analysis han     --tracking-uri sqlite:///grokking/mlflow.db --out han-report

This module parses the arguments and calls: reading the store is `analysis.store`'s (histories through the
local cache), the report, its manifest cache and its MLflow run are `analysis.report`'s. Never imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import pandas as pd
import sqlalchemy.exc
from mlflow.exceptions import MlflowException

from analysis import report as reporting
from analysis import store
from analysis.report import MANIFEST, Source
from analysis.selection import column
from ncshared import schema
from ncshared.bad_input import BadInput, OneLineErrors, require_writable_dir
from ncshared.mlflow_env import StoreUnavailable, open_store, store_failure

TABLE_FORMATS = ("md", "csv", "tex")
FIGURE_FORMATS = ("png", "pdf")


@contextlib.contextmanager
def clean_errors(source: Source) -> Iterator[None]:
    """Turn store and MLflow errors into click's one-line `Error: …`: exit status 2 for a store that cannot be read
    (a database damaged beyond what `open_store` saw at the start), 1 for the rest."""
    try:
        yield
    except store.StoreError as error:
        raise click.ClickException(str(error)) from None
    except MlflowException as error:
        raise click.ClickException(store.first_line(error)) from None
    except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error) as error:
        raise BadInput(str(store_failure(source.uri, error))) from None


def parse_formats(text: str, allowed: Sequence[str], flag: str = "--format") -> tuple[str, ...]:
    """`md,csv` → ("md", "csv"); an unknown format is a usage error naming the allowed ones."""
    formats = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = [fmt for fmt in formats if fmt not in allowed]
    if unknown or not formats:
        raise click.BadParameter(f"{','.join(unknown) or text!r} not in {','.join(allowed)}", param_hint=flag)
    return formats


def formats_option(flag: str, dest: str, allowed: Sequence[str], what: str) -> Callable[..., Any]:
    """A comma-separated formats option, given to the command parsed (`parse_formats`)."""
    return click.option(flag, dest, default=",".join(allowed), show_default=True,
                        help=f"Comma-separated {what} formats: {', '.join(allowed)}.",
                        callback=lambda ctx, param, value: parse_formats(value, allowed, flag))


def source_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command shares, gathered into a `Source` argument."""

    @click.option("--tracking-uri", default=None, metavar="URI",
                  help="MLflow tracking URI (sqlite:///mlflow.db, http://host:5000); "
                       "default: $MLFLOW_TRACKING_URI, else MLflow's local default sqlite:///mlflow.db.")
    @click.option("--experiment", default=None, metavar="NAME",
                  help="Only runs of this MLflow experiment. Default (or `all`): every experiment, so runs of "
                       "`mlflow run .` (experiment Default) and of `ncflow train` (experiment ncflow) are both found.")
    @click.option("--sweep", default=None, metavar="NAME",
                  help=f"Only runs of this sweep (tag {schema.TAG_SWEEP}); `all`: every run.")
    @click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="History cache (default: $NCFLOW_ANALYSIS_CACHE or ~/.cache/ncflow-analysis).",
                  callback=lambda ctx, param, value: value and require_writable_dir(value, "--cache-dir"))
    @click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar while fetching.")
    @functools.wraps(command)
    def wrapper(tracking_uri: str | None, experiment: str | None, sweep: str | None, cache_dir: Path | None,
                progress: bool, **kwargs: Any) -> Any:
        sweep = None if sweep in (None, "", "all") else sweep  # `all` (MLproject's default): every run
        experiment = None if experiment in (None, "", "all") else experiment
        try:
            open_store(tracking_uri)  # before any work: a bad URI, a silent server, a damaged database
        except StoreUnavailable as error:
            raise BadInput(str(error)) from None
        return command(Source(tracking_uri, experiment, sweep, cache_dir, progress), **kwargs)

    return wrapper


def out_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--out DIR`, checked writable (created when missing) as the command starts, before the store is read."""
    return click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("report"),
                        show_default=True, help="Output directory.",
                        callback=lambda ctx, param, value: require_writable_dir(value, "--out"))(command)


def runs_listing(frame: pd.DataFrame) -> str:
    """The compact text table `runs` prints, with a count line."""
    def text(name: str, spec: str) -> pd.Series:
        return column(frame, name).map(lambda v: "-" if pd.isna(v) else format(v, spec))

    listing = pd.DataFrame({
        "run": frame["run_name"], "sweep": frame["sweep"].fillna("-"), "status": frame["status"].fillna("-"),
        "T_NC": text(schema.T_NC, ".0f"), "fn*": text(schema.FN_STAR, ".3f"), "NC1": text(schema.NC1, ".4f"),
    })
    if "step_unit" in frame.columns and (frame["step_unit"] == "step").any():  # grokking: T_NC counts optimiser steps
        listing["T_NC counts"] = frame["step_unit"].fillna("epoch").map({"epoch": "epochs", "step": "steps"})
    counts = frame["status"].fillna("untagged").value_counts().sort_index()
    summary = f"{len(frame)} runs: " + ", ".join(f"{n} {status}" for status, n in counts.items())
    return listing.to_string(index=False) + "\n" + summary + f" (read from {reporting.experiments_read(frame)})"


# ----------------------------------------------------------------------------------------- commands


@click.group(cls=OneLineErrors)
@click.version_option(package_name="ncflow", prog_name="ncflow-analysis")
def main() -> None:
    """Tables, figures and reports of ncflow's neural-collapse runs, read from an MLflow tracking store."""


@main.command()
@source_options
def runs(source: Source) -> None:
    """Print one line per run: name, status, T_NC, fn*, final NC1.

    Example: ncflow-analysis runs --sweep depth
    """
    with clean_errors(source):
        frame = reporting.read_runs(source)
    click.echo(runs_listing(frame))


@main.command()
@source_options
@out_option
@formats_option("--format", "formats", TABLE_FORMATS, "table")
def tables(source: Source, out: Path, formats: tuple[str, ...]) -> None:
    """Write every table (Tables 1–8, lead time, other sweeps; layer-wise, imbalance, ETF head) to OUT.

    Example: ncflow-analysis tables --out report --format md,tex
    """
    with clean_errors(source):
        written = reporting.write_tables(reporting.read_estimates(source), out, formats)
    for _, paths in written.values():
        click.echo("\n".join(str(path) for path in paths))


@main.command()
@source_options
@out_option
@formats_option("--format", "formats", FIGURE_FORMATS, "figure")
def figures(source: Source, out: Path, formats: tuple[str, ...]) -> None:
    """Write every figure (dynamics, sweep panels, grid, intervention, protocol; layer-wise, imbalance,
    train vs test NC1) to OUT.

    Example: ncflow-analysis figures --out report --format png
    """
    with clean_errors(source):
        paths = reporting.write_figures(reporting.read_estimates(source), out, formats)
    click.echo("\n".join(str(path) for path in paths))


@main.command()
@source_options
@out_option
@formats_option("--format", "formats", TABLE_FORMATS, "table")
@formats_option("--figure-format", "figure_formats", FIGURE_FORMATS, "figure")
@click.option("--force", is_flag=True, help=f"Rebuild everything even when OUT/{MANIFEST} says it is up to date.")
@click.option("--log", "log_run", is_flag=True,
              help=f"Record the report as an MLflow run ({schema.TAG_KIND}={schema.KIND_ANALYSIS}).")
@click.option("--compare", type=click.Choice(["paper", "none"]), default="none", show_default=True,
              help="paper: the paper's published values beside ncflow's in every reproduced table, and a claims "
                   "table (each finding tested on these runs: holds / does not hold / not enough runs).")
def report(source: Source, out: Path, formats: tuple[str, ...], figure_formats: tuple[str, ...], force: bool,
           log_run: bool, compare: str) -> None:
    """Write every table and figure to OUT, with OUT/report.md linking them and listing what it could not write.

    Example: ncflow-analysis report --out report --compare paper

    \b
    OUT/.ncflow-report.json records a digest of the inputs (run ids, end times, the runs'
    params/tags/metrics, source, formats, analysis code and library versions) and the
    files written. When a later report finds the same digest and every file in place, it
    reads only the run list and rewrites nothing. A run still RUNNING always rebuilds;
    --force rebuilds regardless.
    """
    with clean_errors(source):
        outcome = reporting.build_report(source, out, formats, figure_formats, force, compare == "paper")
        click.echo("\n".join((outcome.describe(), *outcome.comparisons)))  # with --compare paper: what is filled
        if log_run:
            run_id = reporting.log_report(source, out, outcome.n_runs)
            experiment = source.experiment or schema.DEFAULT_EXPERIMENT
            click.echo(f"logged as MLflow run {run_id} in experiment {experiment!r}")


@main.command()
@source_options
@out_option
@formats_option("--figure-format", "figure_formats", FIGURE_FORMATS, "figure")
def han(source: Source, out: Path, figure_formats: tuple[str, ...]) -> None:
    """Han et al.'s program: the grokking figure, the NCC and flatness regulariser figures, and OUT/claims.md (each
    claim tested per task: holds / does not hold / not enough runs). Runs are grouped by their params, not by sweep.

    Example: ncflow-analysis han --tracking-uri sqlite:///grokking/mlflow.db --out han-report
    """
    from analysis.han_et_al import read_han
    from analysis.han_figures import write_han_report

    if source.experiment is not None:  # a bad experiment is bad input (exit 2), found before any work
        client, uri = store.make_client(source.tracking_uri)
        try:
            store.experiment_names(client, source.experiment, uri)
        except store.StoreError as error:
            raise BadInput(f"--experiment: {error}") from None
    with clean_errors(source):
        han_runs = read_han(source.tracking_uri, source.experiment, source.sweep, source.cache_dir, source.progress)
        paths = write_han_report(han_runs, out, figure_formats)
    click.echo("\n".join(str(path) for path in paths))


if __name__ == "__main__":
    main()
