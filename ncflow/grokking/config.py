"""A grokking run's configuration: `GrokConfig`, its presets, and one-line validation before any work (torch-free,
so `ncflow --help` and the bad-input checks load no torch).

Presets:
- `power` (default): Power et al.'s setting a CPU finishes — p = 97, 30 % of the equations for training, a 2-layer
  transformer (d_model 128, 4 heads, MLP 512), AdamW lr 1e-3, β = (0.9, 0.98), weight decay 1, 10 warm-up steps,
  batches of min(512, n_train), 20,000 optimiser steps, an evaluation every 200.
- `han`: Han et al.'s — 50 % training data, lr 1e-4, 10⁶ steps (on 2 CPU cores about 3 days at ~4 steps/s; meant for
  a GPU; docs/han-et-al.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ncshared.run_config import REGULARISERS

OPERATIONS = ("add", "subtract", "multiply", "divide", "squares")  # a ∘ b mod p; squares: a² + b²


def is_prime(number: int) -> bool:
    return number >= 2 and all(number % divisor for divisor in range(2, int(number**0.5) + 1))

SCHEDULES = ("none", "cosine")


@dataclass(frozen=True)
class GrokConfig:
    p: int = 97  # the prime modulus; K = p classes
    operation: str = "add"  # one of OPERATIONS
    train_fraction: float = 0.3  # share of all equations used for training (the rest: validation)
    layers: int = 2
    d_model: int = 128
    heads: int = 4
    mlp_width: int = 512
    lr: float = 1e-3
    weight_decay: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.98
    warmup_steps: int = 10  # linear warm-up of the learning rate over these optimiser steps
    batch_size: int = 512  # min(batch_size, n_train); 0 means full batch
    steps: int = 20_000  # optimiser steps
    eval_every: int = 200  # optimiser steps between two measurements (and the last step)
    seed: int = 0
    reg: str = "none"  # none | ncc | flatness: loss = CE − reg_lambda · R (ncflow.collapse.regularisers)
    reg_lambda: float = 0.0
    unplug_step: int = 0  # the optimiser step after which the regulariser is removed; 0: never
    unplug_weight_decay: float = -1.0  # at the unplug, switch AdamW's weight decay to this; −1: keep it
    unplug_lr_factor: float = 1.0  # at the unplug, multiply the learning rate by this
    unplug_schedule: str = "none"  # at the unplug, start this schedule over the remaining steps: none | cosine
    nc1_threshold: float = 0.01  # ε of the collapse detector

    def as_params(self) -> dict[str, str]:
        return {name: str(value) for name, value in asdict(self).items()}


PRESETS: dict[str, dict[str, Any]] = {
    "power": {},
    "han": {"train_fraction": 0.5, "lr": 1e-4, "steps": 1_000_000, "eval_every": 5_000},
}


def parse_grok_field(name: str, raw: Any) -> Any:
    """A raw value (a string from `--set` or a sweep definition) as the GrokConfig field's type; ValueError (one
    line naming the field) for an unknown field or a value of the wrong kind."""
    kinds = {field.name: type(field.default) for field in fields(GrokConfig)}
    if name not in kinds:
        raise ValueError(f"{name}: not a grokking setting; allowed: {', '.join(kinds)}")
    kind = kinds[name]
    if isinstance(raw, kind) and not isinstance(raw, bool):
        return raw
    text = str(raw).strip()
    try:
        if kind is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError(text)
            return int(number)
        return kind(text)
    except ValueError:
        raise ValueError(f"{name}: expected {'a whole number' if kind is int else 'a number'}, got {raw!r}") from None


def build_grok_config(preset: str = "power", **overrides: Any) -> GrokConfig:
    """The preset with `overrides` (None values ignored), validated: ValueError with one line naming the field."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    known = {field.name for field in fields(GrokConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}: not a grokking setting")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    config = replace(GrokConfig(), **values)
    if "eval_every" not in values and config.eval_every > config.steps:  # a short run: measure at its end
        config = replace(config, eval_every=config.steps)
    check(config)
    return config


def check(config: GrokConfig) -> None:
    """Every rule a GrokConfig must meet; the first broken one as a ValueError."""
    rules = [
        (is_prime(config.p) and config.p >= 3, "p", f"expected a prime ≥ 3, got {config.p}"),
        (config.operation in OPERATIONS, "operation", f"expected one of {', '.join(OPERATIONS)}"),
        (0.0 < config.train_fraction < 1.0, "train_fraction", "expected a number in (0, 1)"),
        (config.layers >= 1, "layers", "expected an integer ≥ 1"),
        (config.heads >= 1 and config.d_model % config.heads == 0, "heads",
         f"expected a divisor of d_model={config.d_model}"),
        (config.mlp_width >= 1, "mlp_width", "expected an integer ≥ 1"),
        (math.isfinite(config.lr) and config.lr > 0, "lr", "expected a number > 0"),
        (config.weight_decay >= 0, "weight_decay", "expected a number ≥ 0"),
        (0 <= config.beta1 < 1 and 0 <= config.beta2 < 1, "beta1/beta2", "expected numbers in [0, 1)"),
        (config.warmup_steps >= 0, "warmup_steps", "expected an integer ≥ 0"),
        (config.batch_size >= 0, "batch_size", "expected an integer ≥ 0 (0: full batch)"),
        (config.steps >= 1, "steps", "expected an integer ≥ 1"),
        (1 <= config.eval_every <= config.steps, "eval_every", f"expected an integer in [1, steps={config.steps}]"),
        (config.reg in REGULARISERS, "reg", f"expected one of {', '.join(REGULARISERS)}"),
        (math.isfinite(config.reg_lambda) and config.reg_lambda >= 0, "reg_lambda", "expected a number ≥ 0"),
        (config.reg != "none" or config.reg_lambda == 0, "reg_lambda", "needs --reg ncc or --reg flatness"),
        (0 <= config.unplug_step < config.steps, "unplug_step",
         f"expected 0 (never) or a step before the last (steps={config.steps})"),
        (config.unplug_step == 0 or config.reg != "none", "unplug_step", "needs a regulariser to unplug (--reg)"),
        (config.unplug_weight_decay == -1.0 or config.unplug_weight_decay >= 0, "unplug_weight_decay",
         "expected a number ≥ 0, or −1 to keep the weight decay"),
        (math.isfinite(config.unplug_lr_factor) and config.unplug_lr_factor > 0, "unplug_lr_factor",
         "expected a finite number > 0"),
        (config.unplug_step > 0 or (config.unplug_weight_decay == -1.0 and config.unplug_lr_factor == 1.0
                                    and config.unplug_schedule == "none"),
         "unplug_weight_decay/unplug_lr_factor/unplug_schedule", "need an unplug (--unplug-step)"),
        (config.unplug_schedule in SCHEDULES, "unplug_schedule", f"expected one of {', '.join(SCHEDULES)}"),
        (0.0 < config.nc1_threshold < 1.0, "nc1_threshold", "expected a number in (0, 1)"),
    ]
    for holds, name, message in rules:
        if not holds:
            raise ValueError(f"{name}: {message}")
