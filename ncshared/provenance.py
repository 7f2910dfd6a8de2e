"""Where a run ran, the torch-free part: library versions, the CPU model, and the state of the code (git).

`ncflow.tracked.provenance` adds torch's own facts (version, CUDA, cuDNN, device, threads, matmul precision,
determinism) and the data's digest, and writes them all as the run's provenance tags when it opens
(`ncshared.schema`, docs/tracking.md). Torch-free, so the tools and the analysis can use it on any machine.

The code's state is the git commit of the checkout the code was imported from and, when the work tree differs from
that commit, the difference as a patch: `git diff HEAD` (text changes of tracked files) plus every untracked,
not-ignored text file as a new file, so the patch applied to the commit gives the code that ran. A copy of the code
outside git (the snapshot `tools/reproduce_mnist5k.sh` trains from) carries the state of the checkout it was copied
from in a stamp file (`SOURCE_STAMP`, written by `python -m ncshared.provenance --stamp DIR`). Code neither in a
checkout nor stamped is commit `unknown`.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

UNKNOWN = "unknown"
ABSENT = "absent"  # a library that is not installed
SOURCE_STAMP = "ncflow_source.json"  # beside a copied ncflow/ and ncshared/: the state of the checkout it came from
CODE_ROOT = Path(__file__).resolve().parent.parent  # the folder holding ncshared/ (and ncflow/, analysis/)
MAX_UNTRACKED_BYTES = 1 << 20  # an untracked file larger than this is named in the patch, not copied into it
GIT_TIMEOUT_S = 20.0


def package_version(name: str) -> str:
    """The installed version of distribution `name`, or `absent`."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ABSENT


def library_versions() -> dict[str, str]:
    """Python and the libraries a run's numbers or records depend on (torch is `ncflow.tracked.provenance`'s)."""
    return {"python": platform.python_version(), "numpy": package_version("numpy"),
            "mlflow": package_version("mlflow"), "optuna": package_version("optuna")}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows, else `unknown`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or UNKNOWN


@dataclass(frozen=True)
class GitState:
    """The code's commit, whether the work tree differed from it (None: not known), and the patch when it did."""

    commit: str
    dirty: bool | None
    diff: str = ""


def _git(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                          check=False)


def _untracked_patch(top: Path, name: str) -> str:
    """One untracked file as a new-file patch (`git diff --no-index`), or a line naming it when it is too large."""
    path = top / name
    if path.stat().st_size > MAX_UNTRACKED_BYTES:
        return f"# untracked file {name} ({path.stat().st_size:,} bytes) is not included\n"
    return _git(top, "diff", "--no-index", "--", "/dev/null", name).stdout  # exit code 1: the files differ


def git_state(directory: Path) -> GitState:
    """The git state of the checkout holding `directory` (see the module docstring); `unknown` when `directory` is no
    tracked part of a checkout (no git, not a checkout, or a copy in an ignored folder)."""
    try:
        top = _git(directory, "rev-parse", "--show-toplevel")
        if top.returncode != 0:
            return GitState(UNKNOWN, None)
        root = Path(top.stdout.strip())
        if _git(directory, "ls-files", "--error-unmatch", "--", ".").returncode != 0:
            return GitState(UNKNOWN, None)  # an untracked or ignored copy: the checkout's state is not this code's
        commit = _git(root, "rev-parse", "HEAD")
        if commit.returncode != 0:
            return GitState(UNKNOWN, None)
        status = _git(root, "status", "--porcelain", "--untracked-files=all")
        if status.returncode != 0:
            return GitState(commit.stdout.strip(), None)
        if not status.stdout.strip():
            return GitState(commit.stdout.strip(), False)
        diff = _git(root, "diff", "HEAD").stdout
        untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z").stdout.split("\0")
        diff += "".join(_untracked_patch(root, name) for name in untracked if name)
        return GitState(commit.stdout.strip(), True, diff)
    except (OSError, subprocess.SubprocessError):
        return GitState(UNKNOWN, None)


def read_stamp(code_root: Path) -> GitState | None:
    """The state a stamp file beside copied code records, or None when there is none (or it is unreadable)."""
    try:
        found = json.loads((code_root / SOURCE_STAMP).read_text(encoding="utf-8"))
        return GitState(str(found["commit"]), found["dirty"], str(found.get("diff", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@functools.cache
def code_state() -> GitState:
    """The state of the code this process runs: its stamp, else its checkout's git state. Read once per process, when
    first asked (a run's opening): later edits to the work tree are not the code already imported."""
    return read_stamp(CODE_ROOT) or git_state(CODE_ROOT)


def write_stamp(checkout: Path, destination: Path) -> GitState:
    """Write `destination/SOURCE_STAMP` with the git state of `checkout` (a snapshot of its code goes there)."""
    state = git_state(checkout)
    destination.mkdir(parents=True, exist_ok=True)
    (destination / SOURCE_STAMP).write_text(json.dumps(asdict(state)), encoding="utf-8")
    return state


def main() -> int:
    parser = argparse.ArgumentParser(description="Stamp a copy of ncflow's code with the git state of its checkout.")
    parser.add_argument("--stamp", type=Path, required=True, metavar="DIR", help="the folder holding the copied code")
    parser.add_argument("--checkout", type=Path, default=CODE_ROOT, help="the checkout it was copied from")
    args = parser.parse_args()
    state = write_stamp(args.checkout, args.stamp)
    dirty = {True: "dirty", False: "clean", None: "state unknown"}[state.dirty]
    print(f"stamped {args.stamp / SOURCE_STAMP}: commit {state.commit} ({dirty})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
