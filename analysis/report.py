"""The report: every table and figure plus `report.md`, its manifest cache, and its record as an MLflow run.

`build_report` writes `tables/`, `figures/` and `report.md` (linking both) under the output directory — the
paper's tables and figures (`analysis.tables`, `analysis.figures`), then the beyond-the-paper ones
(`analysis.extra_study_tables`, `analysis.extra_study_figures`: layer-wise, imbalance, ETF head, test-set
collapse) — and a manifest (`MANIFEST`: a digest of its inputs and the files it wrote); a repeated report over an
unchanged store finds the manifest matching and the files in place, and rewrites nothing (`force` rebuilds).
`log_report` records the output directory as the artifacts of an MLflow run `analysis-…` (kind
`schema.KIND_ANALYSIS`) in the experiment read (`schema.DEFAULT_EXPERIMENT` when every one was), or of the run `mlflow run` made for this process.
Never imports torch; tables and figures (scipy, matplotlib) are imported only when something is written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import mlflow
import pandas as pd

from analysis import catalogue, layer_store, store
from analysis.render import count
from analysis.run_history import ENDED_STATUSES
from ncshared import schema
from ncshared.mlflow_env import adopted_run_id, resolve_tracking_uri

if TYPE_CHECKING:
    from analysis.aggregate import Estimates
    from analysis.render import Table

MANIFEST = ".ncflow-report.json"  # in the report's output directory
MANIFEST_VERSION = 1  # bump when the manifest's meaning changes
LIBRARIES = ("matplotlib", "mlflow", "numpy", "pandas", "scipy")  # whose versions a report depends on
REPORT_FILE = "report.md"

Written = dict[str, tuple["Table", list[Path]]]  # table stem → (Table, the files written)


@dataclass(frozen=True)
class Source:
    """Where the runs come from, as given on the command line."""

    tracking_uri: str | None
    experiment: str | None  # None: every experiment (ncflow's training runs are found by their kind tag)
    sweep: str | None
    cache_dir: Path | None
    progress: bool

    @property
    def uri(self) -> str:
        return resolve_tracking_uri(self.tracking_uri)

    def describe(self) -> str:
        sweep = f", sweep {self.sweep!r}" if self.sweep else ""
        where = "every experiment" if self.experiment is None else f"experiment {self.experiment!r}"
        return f"{where}{sweep} at {self.uri}"


def experiments_read(runs: pd.DataFrame) -> str:
    """`experiments 'Default' (1 run), 'ncflow' (12 runs)`: where the runs came from."""
    names = runs["experiment"].fillna(runs["experiment_id"].astype(str))
    counts = names.value_counts().sort_index()
    parts = [f"{name!r} ({n} run{'s' if n != 1 else ''})" for name, n in counts.items()]
    return ("experiment " if len(parts) == 1 else "experiments ") + ", ".join(parts)


def read_runs(source: Source) -> pd.DataFrame:
    """The training runs of the source; a StoreError naming what was searched when there are none."""
    runs = store.load_runs(source.tracking_uri, experiment=source.experiment, sweep=source.sweep)
    if runs.empty:
        raise store.StoreError(f"no ncflow training runs found in {source.describe()}")
    return runs


def read_histories(source: Source, runs: pd.DataFrame) -> pd.DataFrame:
    """The runs' histories, through the source's history cache, with the layer-wise runs' `layers.csv` appended
    (`analysis.layer_store`: their `layers/<l>/*` columns are not in `history.csv`)."""
    histories = store.load_histories(runs, source.tracking_uri, cache_dir=source.cache_dir, progress=source.progress)
    layers = layer_store.load_layer_histories(runs, source.tracking_uri, cache_dir=source.cache_dir)
    return pd.concat([histories, layers], ignore_index=True) if len(layers) else histories


def estimates_of(runs: pd.DataFrame, histories: pd.DataFrame) -> "Estimates":
    """The shared estimates behind the tables and the figures (scipy imported here, not at start-up)."""
    from analysis.aggregate import Estimates

    return Estimates(runs, histories)


def read_estimates(source: Source) -> "Estimates":
    """The source's runs and histories, as the estimates the tables and figures are drawn from."""
    runs = read_runs(source)
    return estimates_of(runs, read_histories(source, runs))


# ------------------------------------------------------------------------------------------ writers


def write_tables(estimates: "Estimates", out_dir: Path, formats: Sequence[str]) -> Written:
    """Every table (the paper's, then the beyond-the-paper ones) in every format under out_dir: stem → (Table,
    paths)."""
    from analysis.extra_study_tables import build_extra_study_tables
    from analysis.tables import build_tables

    built = {**build_tables(estimates), **build_extra_study_tables(estimates)}
    return {stem: (table, table.write(out_dir, stem, formats)) for stem, table in built.items()}


def write_figures(estimates: "Estimates", out_dir: Path, formats: Sequence[str]) -> list[Path]:
    """Every figure (the paper's, then the beyond-the-paper ones) in every format under out_dir."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display (a laptop over SSH, CI)
    from analysis.extra_study_figures import build_extra_study_figures
    from analysis.figures import build_figures

    formats = tuple(formats)
    return build_figures(estimates, out_dir, formats=formats) + build_extra_study_figures(estimates, out_dir, formats)


def _link(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def _files_line(paths: Sequence[Path], out_dir: Path) -> str:
    return "Files: " + " · ".join(f"[{p.suffix[1:]}]({_link(p, out_dir)})" for p in paths)


def report_markdown(source: Source, runs: pd.DataFrame, tables: Written, figures: list[Path], out_dir: Path,
                    compared: Written | None = None, coverage: Sequence[Any] = ()) -> str:
    """report.md: where the runs came from, the claims and side-by-side tables when compared with the paper (first
    which comparisons the runs fill and what each empty one needs: `analysis.paper_coverage`), every table (inlined,
    with its files), every figure, and what could not be written."""
    counts = runs["status"].fillna("untagged").value_counts().sort_index()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# ncflow analysis report", "",
        f"Source: {source.describe()} — {count(len(runs), 'run')} "
        f"({', '.join(f'{n} {status}' for status, n in counts.items())}) read from {experiments_read(runs)}. "
        f"Generated {stamp} with MLflow {mlflow.__version__}.", "",
    ]
    if compared:
        lines += ["## Beside the paper", "",
                  "The paper's published values (`analysis/paper_values.py`) next to these runs; "
                  "Δ = ncflow − paper.", ""]
        if coverage:
            from analysis.paper_coverage import markdown_lines

            lines += markdown_lines(list(coverage))
        lines += _table_sections(compared, out_dir)
    lines += ["## Tables", ""]
    if not tables:
        lines += ["No table has runs in this selection.", ""]
    lines += _table_sections(tables, out_dir)
    lines += ["## Figures", ""]
    if not figures:
        lines += ["No figure has runs in this selection.", ""]
    for stem in dict.fromkeys(p.stem for p in figures):
        paths = [p for p in figures if p.stem == stem]
        lines += [f"### {stem}", ""]
        png = next((p for p in paths if p.suffix == ".png"), None)
        if png:
            lines += [f"![{stem}]({_link(png, out_dir)})", ""]
        lines += [_files_line(paths, out_dir), ""]
    lines += not_written_lines(tables, figures)
    return "\n".join(lines)


def _table_sections(tables: Written, out_dir: Path) -> list[str]:
    lines: list[str] = []
    for stem, (table, paths) in tables.items():
        markdown = next((p for p in paths if p.suffix == ".md"), None)
        lines += [f"### {stem}", ""]
        lines += [markdown.read_text(encoding="utf-8").rstrip(), ""] if markdown else [f"**{table.title}**", ""]
        lines += [_files_line(paths, out_dir), ""]
    return lines


def not_written(tables: Written, figures: Sequence[Path]) -> list[catalogue.Output]:
    """The paper's tables and figures this report could not build."""
    return (catalogue.missing(catalogue.TABLES, tables)
            + catalogue.missing(catalogue.FIGURES, (path.stem for path in figures)))


def not_written_lines(tables: Written, figures: Sequence[Path]) -> list[str]:
    absent = not_written(tables, figures)
    if not absent:
        return ["## Not written", "", "Every table and figure of the paper was written.", ""]
    lines = ["## Not written", "", "These need runs this selection does not have:", ""]
    lines += [f"- **{output.title}** (`{output.stem}`): needs {output.needs}; none found." for output in absent]
    return lines + [""]


def write_comparisons(estimates: "Estimates", out_dir: Path, formats: Sequence[str]) -> Written:
    """The side-by-side tables and the claims table (`analysis.compare`) under out_dir."""
    from analysis.compare import comparison_tables

    return {stem: (table, table.write(out_dir, stem, formats)) for stem, table in comparison_tables(estimates).items()}


def write_report(source: Source, runs: pd.DataFrame, out_dir: Path, table_formats: Sequence[str],
                 figure_formats: Sequence[str], compare: bool = False) -> tuple[Written, list[Path], list[Any]]:
    """Histories, then every table and figure (from one set of estimates), then report.md, under out_dir.
    With `compare`, also the paper's values beside ours and the claims table (returned among the tables), and which
    comparisons the runs fill (`analysis.paper_coverage.Coverage`, empty without `compare`)."""
    estimates = estimates_of(runs, read_histories(source, runs))
    written = write_tables(estimates, out_dir / "tables", table_formats)
    compared = write_comparisons(estimates, out_dir / "tables", table_formats) if compare else {}
    found = []
    if compare:
        from analysis.paper_coverage import coverage

        found = coverage(estimates)
    figure_paths = write_figures(estimates, out_dir / "figures", figure_formats)
    markdown = report_markdown(source, runs, written, figure_paths, out_dir, compared, found)
    written = {**written, **compared}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_FILE).write_text(markdown, encoding="utf-8")
    return written, figure_paths, found


@dataclass(frozen=True)
class Outcome:
    """What `build_report` did."""

    path: Path  # report.md
    n_runs: int
    n_tables: int
    n_figure_files: int
    reused: bool  # the manifest matched: nothing was rewritten
    experiments: str = ""  # `experiments_read` of the runs
    n_not_written: int = 0  # the paper's tables and figures the runs did not allow (listed in report.md)
    comparisons: tuple[str, ...] = ()  # with --compare paper: how many comparisons are filled, what empty ones need

    def describe(self) -> str:
        """One line (n_tables counts the tables with runs in them: an empty comparison is not one); `comparisons` has
        the lines that follow it with --compare paper."""
        read = f" in {self.experiments}" if self.experiments else ""
        if self.n_not_written:
            read += f"; {self.n_not_written} of the paper's tables and figures not written (report.md says why)"
        tables, runs = count(self.n_tables, "table"), count(self.n_runs, "run")
        if self.reused:
            return (f"{self.path}: up to date, {tables}, {self.n_figure_files} figure files "
                    f"from {runs}{read} (store unchanged; --force rebuilds)")
        return f"{self.path}: {tables}, {self.n_figure_files} figure files from {runs}{read}"


def build_report(source: Source, out_dir: Path, table_formats: Sequence[str], figure_formats: Sequence[str],
                 force: bool = False, compare: bool = False) -> Outcome:
    """The report under out_dir, rebuilt unless its manifest matches the store (reads only the run list then).
    `compare`: add the paper's values beside ours and the claims table (`--compare paper`)."""
    runs = read_runs(source)
    key = report_key(source, runs, table_formats, figure_formats, compare)
    manifest = None if force else reusable(out_dir, key)
    report_path = out_dir / REPORT_FILE
    if manifest is not None:
        return Outcome(report_path, len(runs), manifest["tables"], manifest["figure_files"], reused=True,
                       experiments=experiments_read(runs), n_not_written=manifest.get("not_written", 0),
                       comparisons=tuple(manifest.get("comparisons", ())))
    (out_dir / MANIFEST).unlink(missing_ok=True)  # a rebuild that fails half-way leaves no manifest behind
    written, figure_paths, found = write_report(source, runs, out_dir, table_formats, figure_formats, compare)
    absent = len(not_written(written, figure_paths))
    comparisons: tuple[str, ...] = ()
    n_tables = len(written)
    if found:
        from analysis.paper_coverage import filled_stems, summary_lines

        comparisons, n_tables = tuple(summary_lines(found)), len(filled_stems(written, found))
    if key is not None:
        table_paths = [path for _, paths in written.values() for path in paths]
        write_manifest(out_dir, key, len(runs), n_tables, [report_path, *table_paths, *figure_paths], absent,
                       comparisons)
    return Outcome(report_path, len(runs), n_tables, len(figure_paths), reused=False,
                   experiments=experiments_read(runs), n_not_written=absent, comparisons=comparisons)


def log_report(source: Source, out_dir: Path, n_runs: int) -> str:
    """Record the report as an MLflow run `analysis-…` (kind analysis) with out_dir as artifacts; its run id.

    Under `mlflow run . -e analyze`, MLflow made the run (and ends it): that run is tagged and given the files.
    """
    client, _ = store.make_client(source.tracking_uri)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = f"analysis-{source.sweep or 'all'}-{stamp}"
    tags = {schema.TAG_KIND: schema.KIND_ANALYSIS, schema.TAG_ANALYSIS_RUNS: str(n_runs)}
    adopted = adopted_run_id()
    if adopted:
        for key, value in {**tags, schema.TAG_RUN_NAME: name}.items():
            client.set_tag(adopted, key, value)
        client.log_artifacts(adopted, str(out_dir))
        return adopted
    experiment = client.get_experiment_by_name(source.experiment or schema.DEFAULT_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(schema.DEFAULT_EXPERIMENT)
    run = client.create_run(experiment_id, run_name=name, tags=tags)
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
               figure_formats: Sequence[str], compare: bool = False) -> str | None:
    """The digest of everything a report is a function of, or None when a run may still change.

    Run ids and end times (a run's history is fixed once it has ended, as in the history cache), the whole runs
    frame (a later tag or summary metric changes it), the source, the formats, the analysis source and the
    library versions. A run that has not ended (RUNNING, no end time) is live: no key, always rebuild.
    """
    ended = runs["mlflow_status"].isin(ENDED_STATUSES) & runs["end_time"].notna()
    if not ended.all():
        return None
    payload = {
        "manifest": MANIFEST_VERSION, "analysis": analysis_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "source": [source.uri, source.experiment, source.sweep],
        "tables": list(table_formats), "figures": list(figure_formats), "compare": compare,
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


def write_manifest(out_dir: Path, key: str, n_runs: int, n_tables: int, paths: Sequence[Path],
                   not_written: int = 0, comparisons: Sequence[str] = ()) -> None:
    """Record the report's key and files (relative path → size); written last, so it vouches for them all."""
    files = {_link(path, out_dir): path.stat().st_size for path in paths}
    manifest = {"key": key, "runs": n_runs, "tables": n_tables, "not_written": not_written,
                "comparisons": list(comparisons),
                "figure_files": sum(1 for name in files if name.startswith("figures/")), "files": files}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
