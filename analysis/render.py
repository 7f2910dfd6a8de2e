"""How a table looks: its cells as text, and the whole table as Markdown, CSV and LaTeX.

`Table` holds a display frame (formatted cells, as printed), its title and notes, and the full-precision numbers
behind it (`data`, written as the CSV). The `fmt_*` helpers spell numbers, intervals and swept values the way
the paper prints them; tables and figure labels both use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import pandas as pd

if TYPE_CHECKING:  # only for annotations: rendering needs no scipy
    from analysis.stats import Summary

LABELS = {
    "depth": "Depth", "width": "Width", "activation": "Act.", "weight_decay": "λ", "rescale_alpha": "α",
    "dataset": "Dataset", "arch": "Architecture", "architecture": "Architecture", "protocol": "Protocol",
    "imbalance_ratio": "ρ", "classifier": "Classifier",
}
ACTIVATION_NAMES = {"relu": "ReLU", "gelu": "GELU", "tanh": "Tanh"}
LATEX_SYMBOLS = {
    "±": r"$\pm$", "λ": r"$\lambda$", "α": r"$\alpha$", "ε": r"$\varepsilon$", "∈": r"$\in$", "Δ": r"$\Delta$",
    "→": r"$\to$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$", "√": r"$\surd$",
    "—": "---", "–": "--", "∝": r"$\propto$", "σ": r"$\sigma$", "ρ": r"$\rho$", "Σ": r"$\Sigma$",
    "−": "-", "²": r"$^2$", "≈": r"$\approx$", "*": r"$^*$",
}
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
FORMATS = ("md", "csv", "tex")


# ----------------------------------------------------------------------------------------------- Table


@dataclass
class Table:
    """A display frame in the paper's layout, its title, the notes printed under it, and the numbers behind it."""

    title: str
    frame: pd.DataFrame  # formatted cells, as printed
    notes: list[str] = field(default_factory=list)
    data: pd.DataFrame | None = None  # full-precision numbers (written as the CSV)

    def to_markdown(self) -> str:
        lines = [f"**{self.title}**", "", markdown_table(self.frame)]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_latex(self, label: str = "") -> str:
        body = self.frame.map(lambda cell: latex_text(str(cell)))
        body.columns = [latex_text(str(column)) for column in body.columns]
        tex = body.to_latex(index=False, escape=False, caption=latex_text(self.title), label=label or None)
        if self.notes:
            notes = "\\\\\n".join(latex_text(note) for note in self.notes)
            tex += "\\begin{flushleft}\\footnotesize\n" + notes + "\n\\end{flushleft}\n"
        return tex

    def write(self, out_dir: Path, stem: str, formats: Sequence[str] = FORMATS) -> list[Path]:
        """Write `stem.md` (title, table, notes), `stem.csv` (the numbers) and `stem.tex`; return the paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            if fmt == "md":
                path.write_text(self.to_markdown(), encoding="utf-8")
            elif fmt == "csv":
                (self.data if self.data is not None else self.frame).to_csv(path, index=False)
            elif fmt == "tex":
                path.write_text(self.to_latex(label=f"tab:{stem}"), encoding="utf-8")
            else:
                raise ValueError(f"Table.write: unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
            paths.append(path)
        return paths


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub pipe table (no `tabulate` needed)."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def latex_text(text: str) -> str:
    """Escape LaTeX specials and spell the table's Unicode symbols as math, so pdflatex compiles it."""
    escaped = "".join(LATEX_SPECIAL.get(char, char) for char in text)
    return "".join(LATEX_SYMBOLS.get(char, char) for char in escaped)


# ----------------------------------------------------------------------------------------- cell text


def count(n: int, noun: str) -> str:
    """`1 run`, `3 runs`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def fmt_pm(summary: Summary, digits: int, n_expected: int | None = None) -> str:
    """`297 ± 9`, `1.077 ± 0.020`; a single value alone; `—` for none; `(n=…)` when n differs from the row's."""
    if summary.n == 0:
        return "—"
    text = f"{summary.mean:.{digits}f}" if summary.n == 1 else f"{summary.mean:.{digits}f} ± {summary.std:.{digits}f}"
    return text if n_expected is None or summary.n == n_expected else f"{text} (n={summary.n})"


def fmt_interval(interval: tuple[float, float], digits: int = 3) -> str:
    low, high = interval
    return "—" if math.isnan(low) else f"[{low:.{digits}f}, {high:.{digits}f}]"


def fmt_pct(fraction: float, digits: int = 1, sign: bool = False) -> str:
    return "—" if math.isnan(fraction) else f"{100 * fraction:{'+' if sign else ''}.{digits}f}%"


def fmt_num(value: float, digits: int) -> str:
    """`0.84`; `—` for a statistic that could not be computed (too few points)."""
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def fmt_p(p: float) -> str:
    """`0.22`; small p in scientific notation (`3.1e-05`)."""
    return "—" if math.isnan(p) else (f"{p:.2f}" if p >= 0.01 else f"{p:.1e}")


def fmt_value(param: str, value: object) -> str:
    """A swept value as the paper prints it: λ = 1e-05, ReLU, α = 0.3."""
    if param == "activation":
        return ACTIVATION_NAMES.get(str(value), str(value))
    if isinstance(value, float) and param in ("weight_decay", "lr"):
        return f"{value:.0e}" if value else "0"
    if isinstance(value, float) and value.is_integer() and param != "rescale_alpha":
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def fmt_threshold(eps: float) -> str:
    return "—" if math.isnan(eps) else f"< {eps:g}"


def label(param: str, value: object) -> str:
    """`Depth = 5`, `λ = 1e-04`: a param and its value, for legends."""
    return f"{LABELS.get(param, param)} = {fmt_value(param, value)}"


def arch_label(run: Mapping[str, object] | pd.Series) -> str:
    """`MLP-5` / `ResNet-20`: the paper's name for a run's model."""
    if run.get("arch") == "mlp":
        return f"MLP-{fmt_value('depth', run.get('depth'))}"
    return "ResNet-20" if run.get("arch") == "resnet20" else str(run.get("arch"))
