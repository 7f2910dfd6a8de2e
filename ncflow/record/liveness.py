"""Whether the process that owns a run record or a sweep trial still runs, and the run's heartbeat tag.

An owner is (host, boot id, pid, process start time). Only its own machine can tell whether it lives: the same
host name and the same boot (an unknown boot, as in a record.json written before the boot id was kept, counts as
this one). There it is alive when /proc shows the pid, not as a zombie, with the start time it had when it
claimed (another start time is another process that got a recycled pid). An owner elsewhere is not alive as far
as this machine can tell; its heartbeat (the run's `ncflow.heartbeat` tag, a trial's heartbeat attribute) and the
staleness windows below decide for it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNKNOWN = "unknown"  # a boot id or start time this machine could not read (no procfs), or an old record's boot

RUN_HEARTBEAT_EVERY_S = 30.0  # the shipper refreshes a training run's `ncflow.heartbeat` tag this often
# A run's heartbeat goes out from its shipper thread, independent of the epoch loop, so three missed beats mean
# the process is gone; `ncflow runs --stale` and `--resume` should not make the user wait longer than that.
RUN_STALE_AFTER_S = 90.0
TRIAL_HEARTBEAT_EVERY_S = 30.0  # a sweep worker refreshes its claimed trial's heartbeat this often
# A stale trial is failed and its point trained again by another worker, so a false verdict costs a whole
# duplicate training run: wait out ten beats (a busy shared store, a worker paused for a moment) first.
TRIAL_STALE_AFTER_S = 300.0


def proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks) of a Linux process from /proc/PID/stat; None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    after_name = text.rsplit(")", 1)[1].split()  # the name in parentheses may itself hold spaces or `)`
    return after_name[0], after_name[19]


def boot_id() -> str:
    """This machine's boot id (a pid and a start time mean something only within one boot); `unknown` without one."""
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return UNKNOWN


def _signal_alive(pid: int) -> bool:
    """Without procfs: whether signal 0 reaches the pid (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Owner:
    """The process that writes a run record or holds a sweep trial; `started` guards against a recycled pid.

    Stored as a mapping of these four fields (record.json, a trial's `ncflow_owner` attribute), in this order.
    """

    host: str
    boot: str
    pid: int
    started: str

    @classmethod
    def this_process(cls) -> "Owner":
        stat = proc_stat(os.getpid())
        return cls(socket.gethostname(), boot_id(), os.getpid(), stat[1] if stat else UNKNOWN)

    @classmethod
    def from_mapping(cls, value: Any) -> "Owner | None":
        """The owner a record.json or a trial attribute names; None when it names none (or not readably).

        `boot` and `started` may be missing or null (record.json before the boot id was kept; no procfs).
        """
        with contextlib.suppress(AttributeError, TypeError, KeyError, ValueError):
            boot, started = value.get("boot"), value.get("started")
            return cls(str(value["host"]), UNKNOWN if boot is None else str(boot), int(value["pid"]),
                       UNKNOWN if started is None else str(started))
        return None

    def is_local(self) -> bool:
        """Whether the owner ran on this machine in this boot, where its pid can be looked up."""
        return self.host == socket.gethostname() and self.boot in (UNKNOWN, boot_id())

    def is_alive(self) -> bool:
        """Whether the owner still runs; False for a zombie, a recycled pid, or an owner this machine cannot see."""
        if not self.is_local():
            return False
        stat = proc_stat(self.pid)
        if stat is None:
            return not Path("/proc").exists() and _signal_alive(self.pid)
        state, started = stat
        return state not in ("Z", "X") and self.started in (UNKNOWN, started)

    def label(self) -> str:
        return f"{self.host} pid {self.pid}"


def heartbeat_value(owner: Owner, now: float | None = None) -> str:
    """`1733140000 host 1234`: when the run's process last said it is alive, and which process it is."""
    return f"{(time.time() if now is None else now):.0f} {owner.host} {owner.pid}"


def parse_heartbeat(value: str | None) -> tuple[float, str, int] | None:
    """(unix seconds, host, pid) of a heartbeat tag's value; None when absent or unreadable."""
    try:
        stamp, host, pid = str(value).split(" ", 2)
        return float(stamp), host, int(pid)
    except (TypeError, ValueError):
        return None
