"""Claim files: one worker per cell, on an --out_dir that several processes or machines share.

A worker trains a cell only after creating its claim file with O_CREAT | O_EXCL, which succeeds
for exactly one creator (also on NFS v3+). The file names the claimer: host name and machine id
(which machine), boot id (which boot of it), pid and the pid's start time (which process). A
claim left by a dead process of this machine, or by this machine before it rebooted, is broken
and retaken; a claim of another machine is never broken (this one cannot see its processes).
Machines sharing a folder therefore need distinct host names.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["CLAIM_FILE", "Owner", "claim", "release"]

CLAIM_FILE = "claim.json"
# A claim file is written right after it is created and a stale claim is broken in milliseconds:
# one still unreadable (or a break still in progress) after this long was left by a dead process.
_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class Owner:
    """Who holds a claim. On Linux `machine` (/etc/machine-id), `boot` (the boot id) and `started` (the
    process's start time) tell another machine, a reboot and a reused pid apart; elsewhere they are None."""

    host: str
    pid: int
    started: str | None = None
    machine: str | None = None
    boot: str | None = None

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}" if self.pid > 0 else "another worker"


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 (starttime); the fields after ')' start at field 3


def _first_line(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def this_process() -> Owner:
    pid = os.getpid()
    machine, boot = _first_line("/etc/machine-id"), _first_line("/proc/sys/kernel/random/boot_id")
    return Owner(socket.gethostname(), pid, _start_time(pid), machine, boot)


def is_alive(owner: Owner) -> bool | None:
    """Whether the claimer still runs; None when it cannot be told (a process of another machine)."""
    me = this_process()
    if owner.host != me.host or owner.machine != me.machine:
        return None
    if owner.boot is not None and me.boot is not None and owner.boot != me.boot:
        return False  # claimed before this machine rebooted
    if owner.pid <= 0:  # os.kill(0 or -n) would signal process groups: a malformed claim is dead
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    if owner.started is not None:
        now = _start_time(owner.pid)
        if now is not None and now != owner.started:
            return False  # the pid was reused by another process
    return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _parse(text: str) -> Owner | None:
    try:
        data = json.loads(text)
        return Owner(str(data["host"]), int(data["pid"]), data.get("started"), data.get("machine"), data.get("boot"))
    except (ValueError, KeyError, TypeError):
        return None


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _break(path: Path, seen: str) -> None:
    """Delete the stale claim `seen`, unless it changed meanwhile; one breaker at a time (a lock file)."""
    lock = path.with_name(path.name + ".break")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if _age(lock) > _GRACE_SECONDS:
            lock.unlink(missing_ok=True)  # its breaker died mid-way; the next attempt breaks the claim
        return
    try:
        # Only breakers (one at a time) and the claimer (dead) delete a claim file: the claim read
        # here is the one that is deleted.
        if _read(path) == seen:
            path.unlink()
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


def claim(path: Path) -> Owner | None:
    """Claim `path` for this process: None when it now holds the claim, else the live (or remote) holder."""
    me = this_process()
    holder = Owner("?", 0)  # a claim still being written, or broken and retaken by others meanwhile
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            text = _read(path)
            if text is None:
                continue  # released meanwhile: try again
            owner = _parse(text)
            if owner is None:
                if _age(path) <= _GRACE_SECONDS:
                    return holder  # being written by its claimer
            elif is_alive(owner) is not False:
                return owner
            _break(path, text)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({**asdict(me), "time": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        return None
    return holder


def release(path: Path) -> None:
    """Give up a claim this process holds (a claim of another process is left alone)."""
    text = _read(path)
    owner = _parse(text) if text is not None else None
    if owner is not None and owner == this_process():
        path.unlink(missing_ok=True)
