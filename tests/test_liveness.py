"""`ncflow.record.liveness`: one owner for run records and sweep trials, alive only while its process runs here."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ncflow.record.liveness import UNKNOWN, Owner, boot_id, heartbeat_value, parse_heartbeat, proc_stat
from ncflow.record.local_record import RECORD_FILE, RunRecord

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux procfs")


def owner_of(process: subprocess.Popen) -> Owner:
    stat = proc_stat(process.pid)
    assert stat is not None
    return Owner(socket.gethostname(), boot_id(), process.pid, stat[1])


def wait_for_state(pid: int, state: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (proc_stat(pid) or ("gone",))[0] != state:
        assert time.monotonic() < deadline, f"pid {pid} never reached state {state}"
        time.sleep(0.01)


def test_this_process_is_local_and_alive():
    me = Owner.this_process()
    assert (me.host, me.pid, me.boot) == (socket.gethostname(), os.getpid(), boot_id())
    assert me.boot != UNKNOWN and me.started != UNKNOWN
    assert me.is_local() and me.is_alive()
    assert me.label() == f"{socket.gethostname()} pid {os.getpid()}"


def test_a_reaped_child_is_dead():
    child = subprocess.Popen(["sleep", "30"])
    owner = owner_of(child)
    assert owner.is_alive()
    child.kill()
    child.wait()
    assert not owner.is_alive()


def test_a_zombie_child_is_dead():
    child = subprocess.Popen(["sleep", "30"])
    try:
        owner = owner_of(child)
        assert owner.is_alive()
        os.kill(child.pid, signal.SIGKILL)
        wait_for_state(child.pid, "Z")  # exited, not yet reaped: its pid and start time are still there
        assert proc_stat(child.pid) == ("Z", owner.started)
        assert not owner.is_alive()
    finally:
        child.kill()
        child.wait()


def test_another_start_time_is_a_recycled_pid():
    me = Owner.this_process()
    recycled = dataclasses.replace(me, started=str(int(me.started) + 1))
    assert recycled.is_local() and not recycled.is_alive()


def test_another_host_or_boot_is_not_decidable_here():
    me = Owner.this_process()
    elsewhere = dataclasses.replace(me, host=f"not-{me.host}")
    rebooted = dataclasses.replace(me, boot="00000000-0000-0000-0000-000000000000")
    for owner in (elsewhere, rebooted):
        assert not owner.is_local()
        assert not owner.is_alive()


def test_a_trial_attribute_round_trips():
    me = Owner.this_process()
    attr = dataclasses.asdict(me)
    assert list(attr) == ["host", "boot", "pid", "started"]
    assert Owner.from_mapping(json.loads(json.dumps(attr))) == me
    assert Owner.from_mapping(None) is None
    assert Owner.from_mapping({"host": "h"}) is None
    assert Owner.from_mapping({"host": "h", "pid": "not a pid"}) is None


def test_a_new_record_keeps_the_boot_id(tmp_path):
    record = RunRecord.create(tmp_path, "run1", {"tracking_uri": "sqlite:///x.db"})
    meta = json.loads((record.directory / RECORD_FILE).read_text())
    me = Owner.this_process()
    assert (meta["host"], meta["boot"], meta["pid"], meta["started"]) == (me.host, me.boot, me.pid, me.started)
    assert meta["tracking_uri"] == "sqlite:///x.db"
    assert record.owner() == me
    record.release()
    assert record.owner() is None


@pytest.mark.parametrize("started", ["mine", None])
def test_an_old_record_without_boot_still_has_a_live_owner(tmp_path, started):
    me = Owner.this_process()
    old = {"tracking_uri": "sqlite:///x.db", "host": me.host, "pid": me.pid,
           "started": me.started if started == "mine" else None, "claimed_at": 1.0, "released": False}
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / RECORD_FILE).write_text(json.dumps(old))
    owner = RunRecord(tmp_path / "run1").owner()
    assert owner is not None
    assert (owner.host, owner.boot, owner.pid) == (me.host, UNKNOWN, me.pid)
    assert owner.started == (me.started if started == "mine" else UNKNOWN)
    assert owner.is_local() and owner.is_alive()
    other = {**old, "started": str(int(me.started) + 1)}
    (tmp_path / "run1" / RECORD_FILE).write_text(json.dumps(other))
    assert not RunRecord(tmp_path / "run1").owner().is_alive()


def test_the_heartbeat_value_round_trips():
    owner = Owner("gpu-node-3", "b", 4242, "17")
    value = heartbeat_value(owner, now=1733140000.4)
    assert value == "1733140000 gpu-node-3 4242"
    assert parse_heartbeat(value) == (1733140000.0, "gpu-node-3", 4242)
    assert parse_heartbeat(None) is None
    assert parse_heartbeat("soon gpu-node-3 4242") is None
    assert parse_heartbeat("1733140000 gpu-node-3") is None
