"""A throwaway PostgreSQL server for tests: initdb + pg_ctl in a temp dir, on a free port on 127.0.0.1.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (`runuser`), in a directory
that user owns; as any other user it runs as that user. Authentication is `trust` on 127.0.0.1 only, fsync is off
(the data is thrown away). `start_postgres()` yields a URL like `postgresql://postgres@127.0.0.1:PORT/ncflow`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

SUPERUSER = "postgres"
DATABASE = "ncflow"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here; the message says why."""


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl (Debian's /usr/lib/postgresql/N/bin, else PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for directory in candidates:
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    raise PostgresUnavailable("initdb/pg_ctl not found (install PostgreSQL, e.g. apt-get install postgresql)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user(command: list[str]) -> list[str]:
    """Run as `postgres` when we are root (PostgreSQL refuses root), else as ourselves."""
    if os.geteuid() != 0:
        return command
    if shutil.which("runuser") is None:
        raise PostgresUnavailable("running as root without runuser: cannot start PostgreSQL as the postgres user")
    return ["runuser", "-u", "postgres", "--", *command]


def _run(command: list[str], timeout_s: float = 60.0) -> None:
    """Run a PostgreSQL tool; a failure raises PostgresUnavailable naming the tool and its stderr."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise PostgresUnavailable(f"{command}: {error}") from None
    if result.returncode != 0:
        tool = next(Path(part).name for part in command if "/" in part)
        raise PostgresUnavailable(f"{tool} failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-1500:]}")


def _server_home() -> Path:
    """A temp dir the server user owns (under /tmp, which every user can traverse)."""
    home = Path(tempfile.mkdtemp(prefix="ncflow-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        import pwd

        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(home, ignore_errors=True)
            raise PostgresUnavailable("running as root and there is no postgres user to run the server") from None
        os.chown(home, entry.pw_uid, entry.pw_gid)
    return home


@contextlib.contextmanager
def start_postgres(timeout_s: float = 60.0) -> Iterator[str]:
    """Start a fresh server with database `ncflow`; yield its URL; stop it and delete its files on exit."""
    bindir = find_bindir()
    home = _server_home()
    data, port = home / "data", free_port()
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        _run(_as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8"]), timeout_s)
        options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        _run(_as_server_user([*pg_ctl, "-o", options, "-l", str(home / "server.log"), "-w", "-t", str(int(timeout_s)), "start"]), timeout_s + 10)
        started = True
        _run(_as_server_user([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, DATABASE]), timeout_s)
        yield f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if started:
            with contextlib.suppress(PostgresUnavailable, subprocess.TimeoutExpired):
                _run(_as_server_user([*pg_ctl, "-m", "immediate", "-w", "stop"]), 30)
        shutil.rmtree(home, ignore_errors=True)
