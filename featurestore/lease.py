"""One writer per feature set: a lease file, created exclusively, naming the process that holds it.

The lease is taken before a writer looks at the set (so two writers can never both decide to recreate it) and
dropped when the set is complete or the writer stops. A process that died holding one (kill -9, a crash) leaves a
stale lease; on its own host that is detected (the pid is gone) and the lease taken over. A lease from another
host cannot be checked from here, so the message says how to clear it by hand.

Leases live under the store's `_leases/` group, not inside the set, so deleting and recreating a set (which its
own writer may do) never drops the lease. On object stores without exclusive create (S3) the check is best effort;
the creation id each set carries (see `SetWriter`) still stops a writer whose set was replaced.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from fsspec import AbstractFileSystem

from featurestore.errors import StoreError

LEASES = "_leases"  # cannot clash with a dataset: names start with a letter or digit


@dataclass
class Lease:
    fs: AbstractFileSystem
    path: str
    owner: dict = field(default_factory=dict)

    def release(self) -> None:
        """Drop the lease if it is still ours (never one a later writer took over from a stale holder)."""
        if not self.owner:
            return
        if _read(self.fs, self.path).get("id") == self.owner["id"]:
            _remove(self.fs, self.path)  # (another copy of this writer, a Ray shard, may have just dropped it)
        self.owner = {}


def acquire(fs: AbstractFileSystem, path: str, what: str) -> Lease:
    """The lease at `path` for this process; StoreError naming the holder when a live writer has it."""
    owner = {"id": uuid.uuid4().hex, "pid": os.getpid(), "host": socket.gethostname(),
             "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    for _ in range(2):  # a second try after clearing a stale lease
        try:
            _create_exclusive(fs, path, json.dumps(owner).encode())
            return Lease(fs, path, owner)
        except FileExistsError:
            holder = _read(fs, path)
            if holder and not _gone(holder):
                raise StoreError(_held_message(what, holder, _shown(fs, path))) from None
            _remove(fs, path)  # its writer is gone (or this very process left it): nothing is writing the set
    raise StoreError(f"cannot take the write lease {_shown(fs, path)} of {what}: another writer keeps "
                     "taking it; run one extraction of a set at a time")


def _create_exclusive(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Create `path` holding `data`, or FileExistsError: atomic where the filesystem can be (local disks, POSIX
    mounts), a check then a write on object stores whose fsspec has no exclusive mode."""
    try:
        with fs.open(path, "xb") as file:
            file.write(data)
    except (ValueError, NotImplementedError):
        if fs.exists(path):
            raise FileExistsError(path) from None
        with fs.open(path, "wb") as file:
            file.write(data)


def _remove(fs: AbstractFileSystem, path: str) -> None:
    try:
        fs.rm(path)
    except FileNotFoundError:
        pass


def _gone(holder: dict) -> bool:
    """Whether the process holding a lease no longer runs (or is this one). Only provable on its own host."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = int(holder.get("pid", -1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, run by another user
        return False
    return False


def _read(fs: AbstractFileSystem, path: str) -> dict:
    try:
        with fs.open(path, "rb") as file:
            return json.loads(file.read() or b"{}")
    except FileNotFoundError:
        return {}
    except ValueError:  # torn by a crash mid-write: no live owner can be named
        return {}


def _shown(fs: AbstractFileSystem, path: str) -> str:
    """A local path as itself, anything else as the URL to pass to that store's tools."""
    return path if "file" in fs.protocol else fs.unstrip_protocol(path)


def _held_message(what: str, holder: dict, url: str) -> str:
    return (f"{what} is being written by another process (pid {holder.get('pid')} on {holder.get('host')}, since "
            f"{holder.get('since')}); one writer per set, so this run stops. Wait for it to finish, or, if that "
            f"process is gone, remove its lease {url} and run again")
