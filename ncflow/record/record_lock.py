"""One writer per run: the exclusive lock a process holds on a run record while it writes or ships the run.

Two processes appending to one journal store every step twice (each retrains and journals its epochs with its
own timestamps), so a process holds the record exclusively before it does any work on it: `RunRecord.claim`
(train, resume, each pack member) and `RunRecord.take(SYNC)` (`ncflow sync`) lock the record's `record.lock`
with `flock(LOCK_EX | LOCK_NB)`. A second claimer gets `RecordTaken` at once, one line naming the run and the
holder (host, pid); a resume may wait a little for a sync, which holds a record only while it ships. While held,
the lock file names its holder (host, boot id, pid, start time) and why (WRITE or SYNC); the name is cleared when
it lets go. The lock is the kernel's, held through an open file descriptor, so it ends with its process however
that ends (SIGKILL and the OOM killer included): a dead owner's record is free at once, and no pid or start-time
guess decides it (a name left by a killed holder is ignored: that process is not alive).

Limits: the guarantee is the file system's flock. Local disks keep it; on NFS (v4, or v3 with lockd) Linux maps
flock to a lock the server enforces for every client (a holder on another host is named as its lock file says;
`ncflow runs --stale` goes by its heartbeat there, as this machine cannot see it live). A mount without lock
support (`nolock`, some FUSE and Lustre mounts) either refuses flock (the claim then falls back to the owner's
liveness, with a warning: two processes on different hosts may both write) or keeps it per machine; a writer on
another host is then seen only by its heartbeat in MLflow, which `ncflow train --resume` checks for a run it has
no local record of.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ncflow.record.liveness import Owner

LOCK_FILE = "record.lock"
WRITE, SYNC = "write", "sync"  # why a process holds a record: it trains the run, or ships what a dead one left
HOLDER_NAMED_WITHIN_S = 0.5  # a new holder names itself right after locking; a refusal waits that long for the name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    """The live process that holds a record's lock, and why (WRITE or SYNC)."""

    owner: Owner
    purpose: str


class RecordTaken(RuntimeError):
    """Another live process holds the run's record; the message is one line naming the run and that process."""

    def __init__(self, run_id: str, holder: Holder | None) -> None:
        self.run_id, self.holder = run_id, holder
        who = holder.owner.label() if holder is not None else "another process"
        if holder is not None and holder.purpose == SYNC:
            message = f"run {run_id}'s record is being shipped to MLflow by {who} (ncflow sync); try again when done"
        else:
            message = f"run {run_id} is still training ({who}); stop it first"
        super().__init__(message)


class RecordLock:
    """The lock of one run record's directory, as held by one object of this process (one open descriptor)."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_FILE
        self.run_id = Path(directory).name
        self._descriptor: int | None = None  # open while this object holds the lock

    @property
    def held(self) -> bool:
        return self._descriptor is not None

    def take(self, purpose: str, wait_for_sync_s: float = 0.0,
             unlocked_writer: Callable[[], Holder | None] = lambda: None) -> None:
        """Hold the lock until `let_go` or this process's end (nothing when held already), naming this process.

        RecordTaken at once when another live process holds it — after up to `wait_for_sync_s` when that process
        only ships the record (SYNC). `unlocked_writer` names a writer that holds no lock, for the message.
        """
        if self._descriptor is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._lock(descriptor, wait_for_sync_s, unlocked_writer)
            me = json.dumps({**asdict(Owner.this_process()), "purpose": purpose, "since": time.time()}).encode()
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, me, 0)
        except BaseException:
            os.close(descriptor)
            raise
        self._descriptor = descriptor

    def _lock(self, descriptor: int, wait_for_sync_s: float, unlocked_writer: Callable[[], Holder | None]) -> None:
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            except OSError as error:  # ENOLCK, EOPNOTSUPP: a mount without locks; the owner's liveness decides
                log.warning("cannot lock %s (%s); only the owner's liveness guards run %s", self.path, error,
                            self.run_id)
                return
            holder = self.holder(local_only=False)
            patience = HOLDER_NAMED_WITHIN_S if holder is None else wait_for_sync_s if holder.purpose == SYNC else 0.0
            if time.monotonic() - started < patience:
                time.sleep(0.05)
                continue
            raise RecordTaken(self.run_id, holder or unlocked_writer())

    def holder(self, local_only: bool = True) -> Holder | None:
        """The live process that holds the lock now (as the lock file names it); None when nobody does.

        `local_only=False` also names a holder on another host, which this machine cannot see alive.
        """
        try:
            named = json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None
        owner = Owner.from_mapping(named)
        if owner is None or not (owner.is_alive() or (not local_only and not owner.is_local())):
            return None  # nobody, or a holder that died (the kernel dropped its lock): the name is left over
        return Holder(owner, str(named.get("purpose", WRITE)))

    def let_go(self) -> None:
        """Give the lock back (its holder's name cleared first); nothing when this object does not hold it."""
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)  # also for a forked child that shares the descriptor
        os.close(descriptor)
