"""`ncflow-analysis`: read the tracking store and write the paper's tables, figures and a report.

    ncflow-analysis runs    --tracking-uri http://host:5000 --sweep depth
    ncflow-analysis tables  --out report --format md,csv
    ncflow-analysis figures --out report --format png
    ncflow-analysis report  --out report --log

Every command reads the runs once (`analysis.store`), histories through the local cache. `report` writes
`tables/`, `figures/` and `report.md` (linking both) under `--out`, and a manifest (`.ncflow-report.json`: a
digest of its inputs and the files it wrote); a repeated `report` over an unchanged store finds the manifest
matching and the files in place, and rewrites nothing (`--force` rebuilds). `--log` records the report as an
MLflow run `analysis-…` (tag ncflow.kind=analysis) in the same experiment, with the output directory as its
artifacts. Never imports torch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import importlib.metadata
import json
import os
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
MANIFEST = ".ncflow-report.json"  # in the report's output directory
MANIFEST_VERSION = 1  # bump when the manifest's meaning changes
LIBRARIES = ("matplotlib", "mlflow", "numpy", "pandas", "scipy")  # whose versions a report depends on


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
    @click.option("--sweep", default=None, help="Only runs of this sweep (tag ncflow.sweep); `all`: every run.")
    @click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="History cache (default: $NCFLOW_ANALYSIS_CACHE or ~/.cache/ncflow-analysis).")
    @click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar while fetching.")
    @functools.wraps(command)
    def wrapper(tracking_uri: str | None, experiment: str, sweep: str | None, cache_dir: Path | None,
                progress: bool, **kwargs: Any) -> Any:
        sweep = None if sweep in (None, "", "all") else sweep  # `all` (MLproject's default): every run
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


def write_report(source: Source, runs: pd.DataFrame, out_dir: Path, table_formats: Sequence[str],
                 figure_formats: Sequence[str]) -> tuple[dict[str, tuple[Any, list[Path]]], list[Path]]:
    """Histories, then every table and figure, then report.md, under out_dir: (tables written, figure paths)."""
    histories = store.load_histories(runs, source.tracking_uri, cache_dir=source.cache_dir, progress=source.progress)
    written = write_tables(runs, histories, out_dir / "tables", table_formats)
    figure_paths = write_figures(runs, histories, out_dir / "figures", figure_formats)
    markdown = report_markdown(source, runs, written, figure_paths, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(markdown, encoding="utf-8")
    return written, figure_paths


def log_report(source: Source, out_dir: Path, n_runs: int) -> str:
    """Record the report as an MLflow run `analysis-…` (tag ncflow.kind=analysis) with out_dir as artifacts."""
    client, _ = store.make_client(source.tracking_uri)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = f"analysis-{source.sweep or 'all'}-{stamp}"
    tags = {"ncflow.kind": "analysis", "ncflow.analysis.runs": str(n_runs),
            "ncflow.analysis.sweep": source.sweep or "all"}
    adopted = os.environ.get("MLFLOW_RUN_ID")
    if adopted:  # under `mlflow run . -e analyze`, MLflow made the run and ends it
        for key, value in {**tags, "mlflow.runName": name}.items():
            client.set_tag(adopted, key, value)
        client.log_artifacts(adopted, str(out_dir))
        return adopted
    experiment = client.get_experiment_by_name(source.experiment)
    run = client.create_run(experiment.experiment_id, run_name=name, tags=tags)
    try:
        client.log_artifacts(run.info.run_id, str(out_dir))
    except Exception:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


# ----------------------------------------------------------------------------------------- manifest


def analysis_version() -> str:
    """A digest of the analysis package's source: any edit to a table or figure invalidates old reports."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def report_key(source: Source, runs: pd.DataFrame, table_formats: Sequence[str],
               figure_formats: Sequence[str]) -> str | None:
    """The digest of everything a report is a function of, or None when a run may still change.

    Run ids and end times (a run's history is fixed once it has ended, as in the history cache), the whole runs
    frame (a later tag or summary metric changes it), the source, the formats, the analysis source and the
    library versions. A run that has not ended (RUNNING, no end time) is live: no key, always rebuild.
    """
    ended = runs["mlflow_status"].isin(store.ENDED_STATUSES) & runs["end_time"].notna()
    if not ended.all():
        return None
    payload = {
        "manifest": MANIFEST_VERSION, "analysis": analysis_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "source": [source.uri, source.experiment, source.sweep],
        "tables": list(table_formats), "figures": list(figure_formats),
        "runs": [[str(run_id), int(end)] for run_id, end in zip(runs["run_id"], runs["end_time"])],
        "frame": hashlib.sha256(runs.to_json(orient="split", double_precision=15,
                                             default_handler=str).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def reusable(out_dir: Path, key: str | None) -> dict[str, Any] | None:
    """The manifest in out_dir when it was written for `key` and every file it lists is there, same size."""
    if key is None:
        return None
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("key") != key or not files:
            return None
        if all((out_dir / name).stat().st_size == size for name, size in files.items()):
            return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return None


def write_manifest(out_dir: Path, key: str, n_runs: int, n_tables: int, paths: Sequence[Path]) -> None:
    """Record the report's key and files (relative path → size); written last, so it vouches for them all."""
    files = {_link(path, out_dir): path.stat().st_size for path in paths}
    manifest = {"key": key, "runs": n_runs, "tables": n_tables,
                "figure_files": sum(1 for name in files if name.startswith("figures/")), "files": files}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")


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
@click.option("--force", is_flag=True, help=f"Rebuild everything even when OUT/{MANIFEST} says it is up to date.")
@click.option("--log", "log_run", is_flag=True, help="Record the report as an MLflow run (ncflow.kind=analysis).")
def report(source: Source, out: Path, formats: str, figure_formats: str, force: bool, log_run: bool) -> None:
    """Write every table and figure to OUT, with OUT/report.md linking them.

    \b
    OUT/.ncflow-report.json records a digest of the inputs (run ids, end times, the runs'
    params/tags/metrics, source, formats, analysis code and library versions) and the
    files written. When a later report finds the same digest and every file in place, it
    reads only the run list and rewrites nothing. A run still RUNNING always rebuilds;
    --force rebuilds regardless.
    """
    table_formats = parse_formats(formats, TABLE_FORMATS)
    chosen_figures = parse_formats(figure_formats, FIGURE_FORMATS)
    report_path = out / "report.md"
    with clean_errors():
        runs_frame = read_runs(source)
        key = report_key(source, runs_frame, table_formats, chosen_figures)
        manifest = None if force else reusable(out, key)
        if manifest is not None:
            click.echo(f"{report_path}: up to date, {manifest['tables']} tables, {manifest['figure_files']} figure "
                       f"files from {len(runs_frame)} runs (store unchanged; --force rebuilds)")
        else:
            (out / MANIFEST).unlink(missing_ok=True)  # a rebuild that fails half-way leaves no manifest behind
            written, figure_paths = write_report(source, runs_frame, out, table_formats, chosen_figures)
            if key is not None:
                table_paths = [path for _, paths in written.values() for path in paths]
                write_manifest(out, key, len(runs_frame), len(written), [report_path, *table_paths, *figure_paths])
            click.echo(f"{report_path}: {len(written)} tables, {len(figure_paths)} figure files "
                       f"from {len(runs_frame)} runs")
        if log_run:
            run_id = log_report(source, out, len(runs_frame))
            click.echo(f"logged as MLflow run {run_id} in experiment {source.experiment!r}")


if __name__ == "__main__":
    main()
