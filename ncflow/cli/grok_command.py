"""`ncflow grok`: one grokking run (modular arithmetic, a small transformer) tracked in MLflow.

One `--option` per `GrokConfig` field (ncflow/grokking/config.py), typed from its default; `--preset power|han`.
Every value is checked before any work or MLflow run (one line, exit 2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

import click

from ncflow.grokking.config import PRESETS, GrokConfig, build_grok_config
from ncshared.bad_input import BadInput


def grok_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for field in reversed(fields(GrokConfig)):
        kind = type(field.default)
        command = click.option(f"--{field.name.replace('_', '-')}", field.name, type=kind, default=None,
                               help=f"[default: {field.default}; see ncflow/grokking/config.py]")(command)
    return command


@click.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="power", show_default=True,
              help="power: Power et al.'s setting a CPU finishes; han: Han et al.'s (lr 1e-4, 10⁶ steps: for a GPU).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's).")
@click.option("--experiment", default="grokking", show_default=True, help="MLflow experiment.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@grok_options
def grok(preset: str, tracking_uri: str | None, experiment: str, device: str, quiet: bool, **values: Any) -> None:
    """Train a transformer on a ∘ b mod p, counted in optimiser steps, measuring collapse, flatness and accuracy
    every --eval-every steps; the grokking markers (memorised, generalised, NCC and flatness drops) at the end.

    Example: ncflow grok --operation add --train-fraction 0.3 --steps 20000
    """
    try:
        config = build_grok_config(preset, **values)
    except ValueError as error:
        raise BadInput(str(error)) from None
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise BadInput("device: cuda was asked for, but torch sees no CUDA device")
    elif device != "cpu":
        raise BadInput(f"device: expected cpu or cuda, got {device!r}")
    from ncflow.grokking.train import train_grokking

    def progress(step: int, row: dict[str, float]) -> None:
        click.echo(f"step {step:>7}  train acc {row['train/acc']:.3f}  val acc {row['test/acc']:.3f}  "
                   f"NCC {row['nc/ncc']:.4g}  flatness {row['nc/flatness']:.4g}")

    monitor = train_grokking(config, tracking_uri, experiment, device, None if quiet else progress)
    summary = monitor.run.client.get_run(monitor.run_id).data.metrics
    markers = ", ".join(f"{key.split('/', 1)[1]} {value:.0f}" for key, value in sorted(summary.items())
                        if key.startswith("grokking/"))
    click.echo(f"run {monitor.run_id} ({monitor.run.run_name}): {markers or 'no marker reached'}")
