"""The `ncflow` command line: `ncflow train` (one condition) and `ncflow sweep` (a named grid)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ncflow.cli.grok_command import grok
from ncflow.cli.options import (
    InputError,
    Seconds,
    TrainCommand,
    WholeNumber,
    config_options,
    merge_value_forms,
    option_name,
)
from ncflow.cli.writable_paths import check_storage_dir, check_writable_paths
from ncflow.engine.config import PRESETS, ConfigError, build_config
from ncshared.bad_input import OneLineErrors, require_writable_dir
from ncshared.run_config import RunConfig


@click.group(cls=OneLineErrors)
@click.version_option(package_name="ncflow")
def main() -> None:
    """Neural-collapse dynamics experiments, tracked in MLflow."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one-line output, even on a resume


TRAINING_STACK = ("torch", "torchvision", "optuna", "sklearn", "mlxtend")  # the `train` extra's modules


def require_training_stack(command: str) -> None:
    """`ncflow COMMAND` trains: without the `train` extra, say in one line what to install (exit 2)."""
    import importlib.util

    missing = [name for name in TRAINING_STACK if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(f"ncflow {command} needs the training stack ({', '.join(missing)} missing): "
                         "pip install 'ncflow[train]' (from a checkout: pip install -e '.[train]')")


# What may accompany --resume: where the run is, how to show progress. Training options come from the run.
RESUME_OPTIONS = ("tracking_uri",)


@main.command(cls=TrainCommand)
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
    help="Continue a run whose process ended (crash, Ctrl-C, SIGTERM, SIGKILL) from its local record, "
    "else its MLflow checkpoints/last.pt; takes no training options (the run's own are used).",
)
@click.option("--force", is_flag=True, help="With --resume: continue a FINISHED run too.")
@click.option(
    "--seeds",
    default=None,
    metavar="0,1,2",
    help="Train these seeds together in one process (a pack: batched on the GPU for MLPs), one MLflow run each, "
    "each the same as the standalone run of its seed; replaces --seed.",
)
@click.option(
    "--ship-timeout",
    type=Seconds(),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="At the end, how long to wait for a tracking server that is down; what it has not taken stays in the "
    "local record for `ncflow sync`.",
)
@click.option(
    "--record-dir",
    default=None,
    metavar="DIR",
    help="Where runs keep their local crash-safe record [default: NCFLOW_RECORD_DIR, else .ncflow/runs].",
)
@config_options
def train(
    preset: str | None, quiet: bool, resume_run_id: str | None, force: bool, seeds: str | None, ship_timeout: float,
    record_dir: str | None, **options: str | None,
) -> None:
    """Train one condition (Phase 1 CE → Phase 2 MSE) and log every epoch's collapse metrics to MLflow.

    At the end it prints where the run is: run id and name, experiment, store, the dynamics figure, and the
    `mlflow ui` command that shows it. The default (digits, MLP-5, 50 + 550 epochs) takes 2–3 minutes on 2 CPU cores.

    \b
    Examples:
      ncflow train --depth 3 --phase2-epochs 200
      ncflow train --preset paper-mnist-mlp --dataset mnist-5k --seed 1
      ncflow train --resume RUN_ID
      ncflow train --preset paper-mnist-mlp --dataset mnist-5k --seeds 0,1,2
    """
    require_training_stack("train")
    from ncflow.record.local_record import RecordDiskFull
    from ncflow.tracked import mlflow_run
    from ncflow.tracked import resume as resuming
    from ncflow.tracked import train as training  # torch loads only when training

    options = merge_value_forms(options)
    try:
        if resume_run_id:
            extra = [option_name(name) for name, value in options.items() if value is not None and name not in RESUME_OPTIONS]
            if preset:
                extra.insert(0, "--preset")
            if seeds is not None:
                extra.append("--seeds")
            if extra:
                raise ConfigError(f"resume: takes no training options (the run's own are used); got {', '.join(extra)}")
            check_writable_paths(record_dir)
            results = [resuming.resume(
                resume_run_id, tracking_uri=options.get("tracking_uri") or "", progress=not quiet, force=force,
                record_dir=record_dir, ship_timeout_s=ship_timeout,
            )]
        else:
            if force:
                raise ConfigError("force: only applies with --resume RUN_ID")
            config = build_config(preset, {name: value for name, value in options.items() if value is not None})
            configs = [config] if seeds is None else seed_configs(config, seeds, options.get("seed"))
            check_writable_paths(record_dir, configs)
            if seeds is not None:
                from ncflow.tracked.pack_train import train_pack

                results = train_pack(configs, progress=not quiet, record_dir=record_dir, ship_timeout_s=ship_timeout)
            else:
                results = [training.train(config, progress=not quiet, record_dir=record_dir,
                                          ship_timeout_s=ship_timeout)]
    except ConfigError as error:
        mlflow_run.fail_adopted_run(str(error))
        raise InputError(str(error)) from None
    except InputError as error:
        mlflow_run.fail_adopted_run(error.message)
        raise
    except KeyboardInterrupt as error:  # Ctrl-C, SIGTERM, SIGHUP: the runs it ended are KILLED and resumable
        from ncflow.record.signals import stopped_line

        where = {"--tracking-uri": options.get("tracking_uri"), "--record-dir": record_dir}
        resume_options = {flag: value for flag, value in where.items() if value}
        raise click.ClickException(stopped_line(error, resume_options)) from None
    except RecordDiskFull as error:  # not bad input (exit 1): the run's failure path ran; one line says what happened
        raise click.ClickException(error.one_line()) from None
    from ncflow.tracked.messages import end_message

    for result in results:
        if result.place is not None:
            click.echo("\n".join(end_message(result.place, result.status, result.t_nc, result.fn_star, result.model)))


def seed_configs(config: RunConfig, seeds: str, seed: str | None) -> list[RunConfig]:
    """`ncflow train --seeds 0,1,2`: the pack's members, one per seed (each seed once)."""
    from ncflow.sweeps.grids import parse_seeds

    if seed is not None:
        raise ConfigError("seeds: give --seeds or --seed, not both")
    chosen = parse_seeds(seeds) or ()
    if not chosen:
        raise ConfigError(f"seeds: expected comma-separated integers like 0,1,2, got {seeds!r}")
    return [config.replace(seed=member) for member in chosen]


@main.command()
@click.option("--stale", is_flag=True, required=True, help="List RUNNING training runs whose process is gone.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default).")
@click.option("--record-dir", default=None, metavar="DIR", help="Where local run records are [default: NCFLOW_RECORD_DIR, else .ncflow/runs].")
def runs(stale: bool, tracking_uri: str | None, record_dir: str | None) -> None:
    """Runs needing care: `ncflow runs --stale` lists runs killed by SIGKILL or OOM (no heartbeat for 90 s).

    Example: ncflow runs --stale --tracking-uri http://127.0.0.1:5000
    """
    require_training_stack("runs")
    from ncflow.record.local_record import record_root
    from ncflow.tracked import mlflow_run, stale_runs

    try:
        client = mlflow_run.client_for_uri(tracking_uri)
    except ConfigError as error:
        raise InputError(str(error)) from None
    found = stale_runs.stale_runs(client, record_root(record_dir))
    if not found:
        click.echo(f"no stale runs in {client.tracking_uri}")
        return
    click.echo(f"{'run':<32}  {'name':<36} {'experiment':<12} {'silent':>8}  {'last owner':<22} {'unsent':<15} resumable")
    for run in found:
        unsent = "no local record" if run.unsent is None else str(run.unsent)
        click.echo(f"{run.run_id:<32}  {run.run_name:<36} {run.experiment:<12} {run.silent_s:>7.0f}s  {run.owner:<22} "
                   f"{unsent:<15} {'yes' if run.resume.resumable else 'no'}")
    for run in found:
        if not run.resume.resumable:
            click.echo(f"run {run.run_id} cannot be resumed: it {run.resume.why}")
    if any(run.resume.resumable for run in found):
        click.echo("continue one with: ncflow train --resume RUN_ID" + (f" --tracking-uri {tracking_uri}" if tracking_uri else ""))


@main.command()
@click.option("--tracking-uri", default=None, help="Only records of this store (default: every record's own store).")
@click.option("--record-dir", default=None, metavar="DIR", help="Where local run records are [default: NCFLOW_RECORD_DIR, else .ncflow/runs].")
def sync(tracking_uri: str | None, record_dir: str | None) -> None:
    """Send MLflow what runs recorded locally while the server was down (their processes have ended).

    Example: ncflow sync
    """
    require_training_stack("sync")
    from ncflow.record.local_record import record_root
    from ncflow.tracked import stale_runs

    root = record_root(record_dir)
    try:
        results = stale_runs.sync(root, tracking_uri)
    except ConfigError as error:
        raise InputError(str(error)) from None
    if not results:
        click.echo(f"nothing to send: every record under {root} is shipped (or still owned by a live process)")
    for record, left in results:
        state = "all sent" if left == 0 else f"{left} entries still unsent"
        click.echo(f"run {record.run_id}: {state}")


def check_own_data(configs: list[RunConfig]) -> None:
    """Your own data (a `dataset` that is a file or folder) read and checked once each, before any run: ConfigError
    (one line) for the first that cannot be used."""
    from ncflow.engine import own_data
    from ncshared.run_config import DATASETS

    for name in sorted({config.dataset for config in configs if config.dataset not in DATASETS}):
        try:
            own_data.load(name)
        except own_data.OwnDataError as error:
            raise ConfigError(f"dataset: {error}") from None


def parse_pack(raw: str) -> str:
    """`--pack`: a whole number >= 1 or `auto` (resolved by each worker on its device)."""
    value = raw.strip().lower()
    if value != "auto" and not (value.isdigit() and int(value) >= 1):
        raise ConfigError(f"pack: expected a whole number >= 1 or auto, got {raw!r}")
    return value


@main.command()
@click.argument("name", required=False)
@click.option("--workers", type=WholeNumber(), default=1, show_default=True, metavar="INTEGER", help="Worker processes on this machine (the cores are split between them).")
@click.option("--storage", default=None, metavar="URL|PATH", help="Optuna storage: a journal file (default .ncflow/optuna.journal, git-ignored), sqlite:///FILE, or postgresql://… for many machines.")
@click.option("--dry-run", is_flag=True, help="List every grid point and whether it is done, running, failed or todo; train nothing.")
@click.option("--dataset", default=None, help="Data set for every point (e.g. mnist-5k); `none` keeps the sweep's.")
@click.option("--seeds", default=None, metavar="0,1,2", help="Seeds (a sweep dimension); `none` keeps the sweep's.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Pin a RunConfig field for every point (repeatable, or comma-joined: phase1_epochs=3,phase2_epochs=5).")
@click.option("--spec", type=click.Path(exists=True, dir_okay=False), default=None, help="A YAML or JSON sweep: name, preset, fixed, grid, seeds.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default).")
@click.option("--experiment", default=None, help="MLflow experiment (default: the MLFLOW_RUN_ID run's, else ncflow).")
@click.option("--pack", default="1", show_default=True, metavar="N|auto", help="Train up to N points that share a model shape together in each worker (one MLflow run each; batched on the GPU); auto: up to 16 on CUDA, 1 on the CPU.")
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
    pack: str,
    quiet: bool,
) -> None:
    """Run the named sweep NAME (depth, activation, weight-decay, width, grid, intervention, protocol; beyond the paper: etf, layerwise, imbalance; Han et al.'s: grokking, ncc-regularizer, flatness-regularizer) exactly once per point.

    The grokking sweeps train on modular arithmetic (`--set` takes `ncflow grok`'s settings, e.g. steps=2000); the
    two regulariser sweeps train through the engine instead when a `--dataset` is given (e.g. mnist-5k).

    At the end it prints the sweep's parent run and its summary CSV.

    \b
    Examples:
      ncflow sweep depth --dry-run
      ncflow sweep depth --dataset mnist-5k --workers 2 --set phase1_epochs=20,phase2_epochs=80
      ncflow sweep depth --pack auto
      ncflow sweep grokking --set operation=add,train_fraction=0.3 --experiment grokking
      ncflow sweep ncc-regularizer --dataset mnist-5k
    """
    require_training_stack("sweep")
    from ncflow.sweeps import coordinator
    from ncflow.sweeps.grids import ENGINE, for_data, lookup_sweep, parse_seeds, parse_settings, resolve_points, with_seeds
    from ncflow.sweeps.plan import DONE, counts_line
    from ncflow.sweeps.storage import storage_kind, storage_url
    from ncflow.tracked import mlflow_run

    try:
        definition = for_data(with_seeds(lookup_sweep(name, spec), parse_seeds(seeds)), dataset)
        overrides = parse_settings(settings, definition.task)
        if dataset is not None and dataset.strip().lower() != "none":
            overrides["dataset"] = dataset
        uri = mlflow_run.client_for_uri(tracking_uri).tracking_uri  # the store checked: one line if unusable
        overrides["experiment"] = experiment or coordinator.default_experiment(uri)
        overrides["tracking_uri"] = uri
        points = resolve_points(definition, overrides)
        run = coordinator.SweepRun(definition, overrides, storage_url(storage), uri, overrides["experiment"], workers,
                              not quiet, parse_pack(pack))
        storage_kind(run.storage)
        if not dry_run:  # what the sweep writes: the storage, the workers' run records, downloaded data
            check_storage_dir(run.storage)
            engine_configs = [point.config for point in points if definition.task == ENGINE]
            check_writable_paths(None, engine_configs)
            check_own_data(engine_configs)
    except ConfigError as error:
        raise InputError(str(error)) from None
    if dry_run:
        click.echo(coordinator.dry_run(run, points))
        return
    states = coordinator.run_sweep(run, points)
    click.echo(f"sweep {definition.name}: " + counts_line(states))
    from ncflow.tracked.messages import sweep_end_message

    for line in sweep_end_message(uri, overrides["experiment"], definition.name):
        click.echo(line)
    unfinished = [s for s in states if s.status != DONE]
    if unfinished:
        raise click.ClickException(f"{len(unfinished)} point(s) not done; run the same command again to retry them")

@main.command()
@click.option("--dataset", default="mnist", show_default=True, help="Data set of the MLP sweeps (mnist-5k works offline).")
@click.option("--sweeps", "sweep_names", default=None, metavar="NAME,…", help="Only these sweeps of the program (default: all).")
@click.option("--seeds", default=None, metavar="0,1,2", help="Seeds of every sweep (default: each sweep's own).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Pin a RunConfig field for every point (as for ncflow sweep).")
@click.option("--workers", type=WholeNumber(), default=1, show_default=True, metavar="INTEGER", help="Worker processes on this machine.")
@click.option("--storage", default=None, metavar="URL|PATH", help="Optuna storage (default: the journal file .ncflow/optuna.journal).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default).")
@click.option("--experiment", default=None, help="MLflow experiment (default: ncflow).")
@click.option("--out", default="report", show_default=True, type=click.Path(file_okay=False), help="Where the report goes.")
@click.option("--dry-run", is_flag=True, help="List the program's distinct points, their state and the projected time; train nothing.")
@click.option("--pack", default="1", show_default=True, metavar="N|auto", help="As for `ncflow sweep`: up to N points of one shape trained together in each worker.")
@click.option("--grid-data", default=None, metavar="NAME,…", help="The grid sweep's data sets in place of its MNIST and CIFAR-10 (mnist-5k: the grid's MNIST half, MLP-5 and ResNet-20, offline).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def reproduce(
    dataset: str, sweep_names: str | None, seeds: str | None, settings: tuple[str, ...], workers: int,
    storage: str | None, tracking_uri: str | None, experiment: str | None, out: str, dry_run: bool, pack: str,
    grid_data: str | None, quiet: bool,
) -> None:
    """Run the paper's MLP program (depth, weight-decay, activation, width, protocol, intervention, grid) once.

    Resumable: run the same command again after any interruption; finished points are reused.
    Example: ncflow reproduce --dataset mnist-5k --grid-data mnist-5k --dry-run
    """
    require_training_stack("reproduce")

    from ncflow.sweeps import coordinator
    from ncflow.sweeps import reproduce as program
    from ncflow.sweeps.grids import parse_seeds, parse_settings
    from ncflow.sweeps.storage import storage_kind, storage_url
    from ncflow.tracked import mlflow_run

    try:
        overrides = {**parse_settings(settings), "dataset": dataset}
        client = mlflow_run.client_for_uri(tracking_uri)
        uri = client.tracking_uri
        overrides["experiment"] = experiment or coordinator.default_experiment(uri)
        overrides["tracking_uri"] = uri
        stages = program.program(program.parse_sweeps(sweep_names), parse_seeds(seeds), overrides,
                                 program.parse_grid_data(grid_data))
        runnable, planned = program.plan_points(stages)
        journal = storage_url(storage)
        storage_kind(journal)
        points_per_pack = parse_pack(pack)
        if not dry_run:  # what the program writes: the storage, the run records, downloaded data, the report
            check_storage_dir(journal)
            check_writable_paths(None, [item.point.config for item in planned if not item.skipped])
            check_own_data([item.point.config for item in planned if not item.skipped])
            require_writable_dir(out, "--out")
    except ConfigError as error:
        raise InputError(str(error)) from None
    done = program.done_points(planned, uri, overrides["experiment"])
    if dry_run:
        todo = [item.point for item in planned if not item.skipped and item.point.key not in done]
        projection, _ = program.projected_seconds(todo, workers)
        click.echo(program.describe(planned, done, projection, workers))
        return
    stages_run = program.busy_stages(runnable, done, workers)
    for label, line in program.run_program(stages_run, journal, uri, overrides["experiment"], workers, not quiet,
                                           points_per_pack):
        click.echo(f"{label}: {line}")
    for item in planned:
        if item.skipped:
            click.echo(f"skipped {item.point.label()} seed {item.point.seed} ({','.join(item.sweeps)}): {item.skipped}")
    from ncflow.cli.reproduction_report import write_reproduction_report

    click.echo(write_reproduction_report(uri, overrides["experiment"], Path(out), not quiet))


main.add_command(grok)

if __name__ == "__main__":
    main()
