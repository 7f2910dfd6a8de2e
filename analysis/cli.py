"""`ncflow-analysis`: read the tracking store and write the paper's tables, figures and a report.

    ncflow-analysis runs    --tracking-uri http://host:5000 --sweep depth
    ncflow-analysis tables  --out report --format md,csv
    ncflow-analysis figures --out report --format png
    ncflow-analysis report  --out report --log

Every command reads the runs once (`analysis.store`), histories through the local cache. `report` writes
`tables/`, `figures/` and `report.md` (linking both) under `--out`; `--log` records the report as an MLflow run
`analysis-…` (tag ncflow.kind=analysis) in the same experiment, with the output directory as its artifacts.
Never imports torch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click
import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from analysis import store

TABLE_FORMATS = ("md", "csv", "tex")
FIGURE_FORMATS = ("png", "pdf")


@dataclass(frozen=True)
class Source:
    """Where the runs come from, as given on the command line."""

    tracking_uri: str | None
    experiment: str
    sweep: str | None
    cache_dir: Path | None
    progress: bool

    @property
    def uri(self) -> str:
        return store.resolve_tracking_uri(self.tracking_uri)

    def describe(self) -> str:
        sweep = f", sweep {self.sweep!r}" if self.sweep else ""
        return f"experiment {self.experiment!r}{sweep} at {self.uri}"


@contextlib.contextmanager
def clean_errors() -> Iterator[None]:
    """Turn store and MLflow errors into click's one-line `Error: …` and exit status 1."""
    try:
        yield
    except store.StoreError as error:
        raise click.ClickException(str(error)) from None
    except MlflowException as error:
        raise click.ClickException(store._first_line(error)) from None


def parse_formats(text: str, allowed: Sequence[str]) -> tuple[str, ...]:
    """`md,csv` → ("md", "csv"); an unknown format is a usage error naming the allowed ones."""
    formats = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = [fmt for fmt in formats if fmt not in allowed]
    if unknown or not formats:
        raise click.BadParameter(f"{','.join(unknown) or text!r} not in {','.join(allowed)}", param_hint="--format")
    return formats


def source_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command shares, gathered into a `Source` argument."""

    @click.option("--tracking-uri", default=None,
                  help="MLflow tracking URI (sqlite:///mlflow.db, http://host:5000); "
                       "default: $MLFLOW_TRACKING_URI, else MLflow's local default.")
    @click.option("--experiment", default="ncflow", show_default=True, help="MLflow experiment name.")
    @click.option("--sweep", default=None, help="Only runs of this sweep (tag ncflow.sweep).")
    @click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="History cache (default: $NCFLOW_ANALYSIS_CACHE or ~/.cache/ncflow-analysis).")
    @click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar while fetching.")
    @functools.wraps(command)
    def wrapper(tracking_uri: str | None, experiment: str, sweep: str | None, cache_dir: Path | None,
                progress: bool, **kwargs: Any) -> Any:
        return command(Source(tracking_uri, experiment, sweep, cache_dir, progress), **kwargs)

    return wrapper


def out_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("report"),
                        show_default=True, help="Output directory.")(command)


def read_runs(source: Source) -> pd.DataFrame:
    """The training runs of the source; a one-line error when there are none."""
    runs = store.load_runs(source.tracking_uri, experiment=source.experiment, sweep=source.sweep)
    if runs.empty:
        raise click.ClickException(f"no runs found in {source.describe()}")
    return runs


def read_all(source: Source) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs and their histories."""
    runs = read_runs(source)
    histories = store.load_histories(runs, source.tracking_uri, cache_dir=source.cache_dir, progress=source.progress)
    return runs, histories


# ------------------------------------------------------------------------------------------ writers


def write_tables(runs: pd.DataFrame, histories: pd.DataFrame, out_dir: Path,
                 formats: Sequence[str]) -> dict[str, tuple[Any, list[Path]]]:
    """Every table in every format under out_dir: stem → (Table, paths)."""
    from analysis.tables import build_tables  # pandas/scipy only; imported here so `runs` starts fast

    written = {}
    for stem, table in build_tables(runs, histories).items():
        written[stem] = (table, table.write(out_dir, stem, formats))
    return written


def write_figures(runs: pd.DataFrame, histories: pd.DataFrame, out_dir: Path, formats: Sequence[str]) -> list[Path]:
    """Every figure in every format under out_dir."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display (a laptop over SSH, CI)
    from analysis.figures import build_figures

    return build_figures(runs, histories, out_dir, formats=tuple(formats))


def _link(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def report_markdown(source: Source, runs: pd.DataFrame, tables: dict[str, tuple[Any, list[Path]]],
                    figures: list[Path], out_dir: Path) -> str:
    """report.md: where the runs came from, every table (inlined, with its files) and every figure."""
    counts = runs["status"].fillna("untagged").value_counts().sort_index()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# ncflow analysis report", "",
        f"Source: {source.describe()} — {len(runs)} runs "
        f"({', '.join(f'{n} {status}' for status, n in counts.items())}). "
        f"Generated {stamp} with MLflow {mlflow.__version__}.", "",
        "## Tables", "",
    ]
    if not tables:
        lines += ["No table has runs in this selection.", ""]
    for stem, (table, paths) in tables.items():
        markdown = next((p for p in paths if p.suffix == ".md"), None)
        lines += [f"### {stem}", ""]
        lines += [markdown.read_text(encoding="utf-8").rstrip(), ""] if markdown else [f"**{table.title}**", ""]
        lines += ["Files: " + " · ".join(f"[{p.suffix[1:]}]({_link(p, out_dir)})" for p in paths), ""]
    lines += ["## Figures", ""]
    if not figures:
        lines += ["No figure has runs in this selection.", ""]
    for stem in dict.fromkeys(p.stem for p in figures):
        paths = [p for p in figures if p.stem == stem]
        lines += [f"### {stem}", ""]
        png = next((p for p in paths if p.suffix == ".png"), None)
        if png:
            lines += [f"![{stem}]({_link(png, out_dir)})", ""]
        lines += ["Files: " + " · ".join(f"[{p.suffix[1:]}]({_link(p, out_dir)})" for p in paths), ""]
    return "\n".join(lines)


def log_report(source: Source, out_dir: Path, n_runs: int) -> str:
    """Record the report as an MLflow run `analysis-…` (tag ncflow.kind=analysis) with out_dir as artifacts."""
    client, _ = store.make_client(source.tracking_uri)
    experiment = client.get_experiment_by_name(source.experiment)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    tags = {"ncflow.kind": "analysis", "ncflow.analysis.runs": str(n_runs),
            "ncflow.analysis.sweep": source.sweep or "all"}
    run = client.create_run(experiment.experiment_id, run_name=f"analysis-{source.sweep or 'all'}-{stamp}", tags=tags)
    try:
        client.log_artifacts(run.info.run_id, str(out_dir))
    except Exception:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


# ----------------------------------------------------------------------------------------- commands


@click.group()
def main() -> None:
    """Tables, figures and reports of ncflow's neural-collapse runs, read from an MLflow tracking store."""


@main.command()
@source_options
def runs(source: Source) -> None:
    """Print one line per run: name, status, T_NC, fn*, final NC1."""
    with clean_errors():
        frame = read_runs(source)
    click.echo(runs_listing(frame))


def runs_listing(frame: pd.DataFrame) -> str:
    """The compact text table `runs` prints, with a count line."""
    def column(name: str) -> pd.Series:
        return frame[name] if name in frame.columns else pd.Series(float("nan"), index=frame.index)

    listing = pd.DataFrame({
        "run": frame["run_name"], "sweep": frame["sweep"].fillna("-"), "status": frame["status"].fillna("-"),
        "T_NC": column("collapse/T_NC").map(lambda v: "-" if pd.isna(v) else f"{v:.0f}"),
        "fn*": column("collapse/fn_star").map(lambda v: "-" if pd.isna(v) else f"{v:.3f}"),
        "NC1": column("nc/nc1").map(lambda v: "-" if pd.isna(v) else f"{v:.4f}"),
    })
    counts = frame["status"].fillna("untagged").value_counts().sort_index()
    summary = f"{len(frame)} runs: " + ", ".join(f"{n} {status}" for status, n in counts.items())
    return listing.to_string(index=False) + "\n" + summary


@main.command()
@source_options
@out_option
@click.option("--format", "formats", default=",".join(TABLE_FORMATS), show_default=True,
              help="Comma-separated table formats: md, csv, tex.")
def tables(source: Source, out: Path, formats: str) -> None:
    """Write every table (Tables 1–8, lead time, other sweeps) to OUT."""
    chosen = parse_formats(formats, TABLE_FORMATS)
    with clean_errors():
        runs_frame, histories = read_all(source)
        written = write_tables(runs_frame, histories, out, chosen)
    for _, paths in written.values():
        click.echo("\n".join(str(path) for path in paths))


@main.command()
@source_options
@out_option
@click.option("--format", "formats", default=",".join(FIGURE_FORMATS), show_default=True,
              help="Comma-separated figure formats: png, pdf.")
def figures(source: Source, out: Path, formats: str) -> None:
    """Write every figure (dynamics, sweep panels, grid, intervention, protocol) to OUT."""
    chosen = parse_formats(formats, FIGURE_FORMATS)
    with clean_errors():
        runs_frame, histories = read_all(source)
        paths = write_figures(runs_frame, histories, out, chosen)
    click.echo("\n".join(str(path) for path in paths))


@main.command()
@source_options
@out_option
@click.option("--format", "formats", default=",".join(TABLE_FORMATS), show_default=True,
              help="Comma-separated table formats: md, csv, tex.")
@click.option("--figure-format", "figure_formats", default=",".join(FIGURE_FORMATS), show_default=True,
              help="Comma-separated figure formats: png, pdf.")
@click.option("--log", "log_run", is_flag=True, help="Record the report as an MLflow run (ncflow.kind=analysis).")
def report(source: Source, out: Path, formats: str, figure_formats: str, log_run: bool) -> None:
    """Write every table and figure to OUT, with OUT/report.md linking them."""
    table_formats = parse_formats(formats, TABLE_FORMATS)
    chosen_figures = parse_formats(figure_formats, FIGURE_FORMATS)
    with clean_errors():
        runs_frame, histories = read_all(source)
        written = write_tables(runs_frame, histories, out / "tables", table_formats)
        figure_paths = write_figures(runs_frame, histories, out / "figures", chosen_figures)
        report_path = out / "report.md"
        report_path.write_text(report_markdown(source, runs_frame, written, figure_paths, out), encoding="utf-8")
        click.echo(f"{report_path}: {len(written)} tables, {len(figure_paths)} figure files "
                   f"from {len(runs_frame)} runs")
        if log_run:
            run_id = log_report(source, out, len(runs_frame))
            click.echo(f"logged as MLflow run {run_id} in experiment {source.experiment!r}")


if __name__ == "__main__":
    main()
