"""Which of the paper's comparisons (`report --compare paper`) these runs fill, and what each empty one needs.

A comparison is filled when ncflow has runs for it: the family its table varies (Tables 2, 3, 4, 7 and 8), two or
more (model, data set) cells of the grid (Table 6), a claim decided (the claims), collapsed width runs with a
crossing (the early warning). An empty one is still written (the paper's column stands) but is not counted as a
table written, and the report says what would fill it: the paper's data set and protocol, the command that trains
those runs, and why the runs in the store do not count. A filled one trained on other data or another protocol than
the paper's says so: its Δ then compares two experiments, not a reproduction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

import pandas as pd

from analysis.render import count
from analysis.selection import column, training_runs

if TYPE_CHECKING:
    from analysis.aggregate import Estimates

PAPER_DATASET = "mnist"
PAPER_EPOCHS = (200, 400)  # the paper's MNIST protocol: CE, then MSE epochs (preset paper-mnist-mlp)
MNIST_MLP = "on MNIST, Adam 1e-3 cosine, 200 CE + 400 MSE epochs, 3 seeds"


@dataclass(frozen=True)
class Comparison:
    """One of the paper's tables (or its claims) as `report --compare paper` sets it beside ncflow's."""

    prefix: str  # the stems of its tables: `paper_table2_depth` and its readings at other ε (`…_eps_0.01`)
    title: str
    protocol: str  # the paper's data set and protocol for it
    command: str  # what trains the runs it needs
    family: str | None = None  # the param its family varies (Tables 2, 3, 4, 7, 8)


COMPARISONS = (
    Comparison("paper_claims", "the paper's claims",
               "the paper's MLP program on MNIST (the runs of Tables 2, 3, 4, 7 and 8 and CE-only runs)",
               "ncflow reproduce --dataset mnist --data-dir DIR"),
    Comparison("paper_table2_depth", "Table 2 (depth)",
               f"MLPs of depth 2, 3, 5, 7, width 512, ReLU, λ = 1e-4 {MNIST_MLP}",
               "ncflow sweep depth --data-dir DIR", "depth"),
    Comparison("paper_table3_activation", "Table 3 (activation)",
               f"MLP-5 width 512 with ReLU, GELU (4 seeds) and Tanh, λ = 1e-4 {MNIST_MLP}",
               "ncflow sweep activation --data-dir DIR",
               "activation"),
    Comparison("paper_table4_weight_decay", "Table 4 (weight decay)",
               f"MLP-5 width 512 ReLU at λ = 1e-5, 5e-5, 1e-4, 5e-4 {MNIST_MLP}",
               "ncflow sweep weight-decay --data-dir DIR",
               "weight_decay"),
    Comparison("paper_table6_grid", "Table 6 (model × data set)",
               "MLP-5 on MNIST (200 CE + 400 MSE) and ResNet-20 on MNIST and CIFAR-10 (SGD 0.1 Nesterov, λ = 1e-3, "
               "200 CE + 600 MSE, steps at 300 and 450), 3 seeds; at least two of the four cells",
               "ncflow sweep grid --data-dir DIR"),
    Comparison("paper_table7_width", "Table 7 (width)",
               f"MLP-5 ReLU of width 128, 256, 512, 1024, λ = 1e-4 {MNIST_MLP}",
               "ncflow sweep width --data-dir DIR", "width"),
    Comparison("paper_table8_intervention", "Table 8 (intervention)",
               f"MLP-5 width 512 ReLU, λ = 1e-4, Phase 2 from each seed's epoch-200 checkpoint with α = 1, 0.3, 3 "
               f"{MNIST_MLP}",
               "ncflow sweep intervention --data-dir DIR", "rescale_alpha"),
    Comparison("early_warning", "the early warning (T_cross)",
               "at least 3 collapsed runs of the width sweep (Table 7's runs), each crossing its width's fn*",
               "ncflow sweep width --data-dir DIR"),
)


@dataclass(frozen=True)
class Coverage:
    """Whether a comparison is filled, and the line the report gives it."""

    comparison: Comparison
    filled: bool
    note: str  # filled: the runs compared, and how they differ from the paper's; empty: what would fill it


def comparison_of(stem: str) -> Comparison | None:
    """The comparison a table stem belongs to (its longest matching prefix), None for a stem of no comparison."""
    found = [c for c in COMPARISONS if stem == c.prefix or stem.startswith(c.prefix + "_")]
    return max(found, key=lambda c: len(c.prefix)) if found else None


def coverage(estimates: Estimates) -> list[Coverage]:
    """Every comparison: filled or not, with its note."""
    return [_coverage(comparison, estimates) for comparison in COMPARISONS]


def filled_stems(stems: Iterable[str], found: list[Coverage]) -> list[str]:
    """The stems that count as tables written: those of filled comparisons (a stem of no comparison counts)."""
    filled = {entry.comparison.prefix: entry.filled for entry in found}
    return [stem for stem in stems if (c := comparison_of(stem)) is None or filled.get(c.prefix, True)]


def summary_lines(found: list[Coverage]) -> list[str]:
    """`3 of 8 comparisons with the paper filled`, then one line per empty comparison saying what it needs."""
    filled = sum(entry.filled for entry in found)
    lines = [f"{filled} of {len(found)} comparisons with the paper filled"]
    return lines + [f"  {entry.comparison.title}: {entry.note}" for entry in found if not entry.filled]


def markdown_lines(found: list[Coverage]) -> list[str]:
    """The report's account of the comparisons: filled ones with what they compared, empty ones with their needs."""
    lines = [summary_lines(found)[0] + ":", ""]
    for entry in found:
        state = "compared" if entry.filled else "not compared"
        lines.append(f"- **{entry.comparison.title}** — {state}: {entry.note}")
    return lines + [""]


# ------------------------------------------------------------------------------------------ per comparison


def _coverage(comparison: Comparison, estimates: Estimates) -> Coverage:
    used = _used_runs(comparison, estimates)
    if used is None:
        return Coverage(comparison, False, _needs(comparison, estimates.runs))
    return Coverage(comparison, True, _compared(used))


def _used_runs(comparison: Comparison, estimates: Estimates) -> pd.DataFrame | None:
    """The runs a filled comparison compares; None when it is empty."""
    runs = training_runs(estimates.runs)
    if comparison.family is not None:
        used = estimates.family(comparison.family).selection.used
        return used if len(used) else None
    deciders: dict[str, Callable[[], bool]] = {
        "paper_claims": lambda: _claims_decided(estimates),
        "paper_table6_grid": lambda: estimates.grid is not None,
        "early_warning": lambda: estimates.lead_time is not None,
    }
    return runs if deciders[comparison.prefix]() else None


def _claims_decided(estimates: Estimates) -> bool:
    from analysis import claims

    return any(claim.verdict != claims.TOO_FEW for claim in claims.evaluate(estimates))


def _compared(used: pd.DataFrame) -> str:
    """`3 runs on mnist, 200 CE + 400 MSE epochs`, and how that differs from the paper's data and protocol."""
    datasets = sorted(set(column(used, "dataset").dropna().astype(str)))
    pairs = zip(column(used, "phase1_epochs"), column(used, "phase2_epochs"), strict=True)
    epochs = sorted({(int(a), int(b)) for a, b in pairs if pd.notna(a) and pd.notna(b)})
    text = (f"{count(len(used), 'run')} on {', '.join(datasets) or 'unknown data'}, "
            + ", ".join(f"{a} CE + {b} MSE epochs" for a, b in epochs))
    other_data = [name for name in datasets if name not in (PAPER_DATASET, "cifar10")]
    other_epochs = [pair for pair in epochs if pair not in (PAPER_EPOCHS, (200, 600))]
    if other_data or other_epochs:
        text += (" — not the paper's data and protocol (MNIST, 200 CE + 400 MSE; ResNet-20 on CIFAR-10 200 + 600): "
                 "Δ compares two experiments, not a reproduction")
    return text


def _needs(comparison: Comparison, runs: pd.DataFrame) -> str:
    """What runs would fill an empty comparison, and what the store has instead."""
    train = training_runs(runs)
    if train.empty:
        return f"needs {comparison.protocol} (`{comparison.command}`); this store has no training run"
    datasets = ", ".join(sorted(set(column(train, "dataset").dropna().astype(str))))
    they = "it" if len(train) == 1 else "they"
    return (f"needs {comparison.protocol} (`{comparison.command}`); this store has "
            f"{count(len(train), 'training run')} (on {datasets}), and {they} {_why_not(comparison, len(train) == 1)}")


def _why_not(comparison: Comparison, one: bool) -> str:
    """Why the store's runs do not fill the comparison (`one`: said of a single run)."""
    if comparison.family is not None:
        word = {"rescale_alpha": "α", "weight_decay": "λ"}.get(comparison.family, comparison.family)
        sweep = {"rescale_alpha": "intervention", "weight_decay": "weight-decay"}.get(comparison.family,
                                                                                   comparison.family)
        return (f"{'forms' if one else 'form'} no {word} family: that takes the `{sweep}` sweep's runs, or runs at "
                f"two or more values of {word} that share every other setting")
    return {
        "paper_claims": f"{'decides' if one else 'decide'} none of the claims (each needs the runs of its table)",
        "paper_table6_grid": f"{'fills' if one else 'fill'} fewer than two (model, data set) cells of the grid sweep",
        "early_warning": f"{'gives' if one else 'give'} fewer than 3 collapsed width-family runs with a crossing",
    }[comparison.prefix]
