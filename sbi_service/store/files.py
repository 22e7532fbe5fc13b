"""The files of a model version: checksums, containment under the home, leftovers of crashes.

Every file a save writes is hashed (sha256) before the folder is renamed into place,
and the digests are recorded in the database with the version (``Store``). Loading
checks each file against them first, so a truncated, altered or missing file is
refused with a ``ModelFileError`` naming the file, never served.

A save writes into ``models/{model}/.tmp-{pid}-{hex}``; a process killed mid-save
leaves that folder behind, and the next ``Store`` opened on the home removes the ones
whose process is gone (``remove_stale_tmp``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from pathlib import Path

from sbi_service.errors import ModelFileError, StoreUnwritableError, UserError

TMP_PREFIX = ".tmp-"
CHUNK = 1 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digests(folder: Path) -> dict[str, dict[str, int | str]]:
    """{file name: {"sha256": hex, "bytes": size}} for every file in ``folder``."""
    return {
        p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def verify(folder: Path, expected: dict[str, dict[str, int | str]], what: str) -> None:
    """Raise ``ModelFileError`` unless every recorded file is present and unchanged.

    ``what`` names the version in the message (e.g. "model 'tiny' version 2").
    """
    if not folder.is_dir():
        raise ModelFileError(
            f"{what}: its folder is missing from the store; restore it from a backup "
            "or train a new version"
        )
    for name, want in expected.items():
        path = folder / name
        if not path.is_file():
            raise ModelFileError(f"{what}: {name} is missing; restore it or train a new version")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise ModelFileError(
                f"{what}: {name} has {size} bytes but {want['bytes']} were saved (truncated or "
                "altered); refusing to load it: restore it or train a new version"
            )
        if sha256(path) != want["sha256"]:
            raise ModelFileError(
                f"{what}: {name} does not match the sha256 recorded when it was saved (damaged "
                "or altered); refusing to load it: restore it or train a new version"
            )


def inside(home: Path, path: Path) -> Path:
    """``path``, if it lies under ``home`` once resolved; else ``UserError`` (never leave home)."""
    if not path.resolve().is_relative_to(home.resolve()):
        raise UserError(f"{path} lies outside the store {home}; refusing to use it")
    return path


def tmp_folder(parent: Path) -> Path:
    """A fresh temporary folder name in ``parent`` that records this process's id."""
    return parent / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"


def remove_stale_tmp(models_dir: Path) -> list[Path]:
    """Remove the temporary save folders whose process is gone; returns them."""
    removed = []
    for tmp in models_dir.glob(f"*/{TMP_PREFIX}*"):
        pid = tmp.name[len(TMP_PREFIX) :].split("-")[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS): the signal check is all there is
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def check_writable(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder``: ``StoreUnwritableError`` when that fails."""
    probe = folder / f"{TMP_PREFIX}{os.getpid()}-probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise unwritable(e, folder, what) from None


def unwritable(e: OSError, folder: Path, what: str) -> StoreUnwritableError:
    """The error for an ``OSError`` met while writing ``what`` under ``folder``."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # full disk, quota, size limit
        return StoreUnwritableError(
            f"no space left on the device holding {folder} while writing {what}; "
            "nothing was saved: free some space and try again"
        )
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreUnwritableError(
            f"{folder} is not writable ({e.strerror}), so {what} cannot be saved; "
            "point SBI_SERVICE_HOME at a writable folder or fix its permissions"
        )
    return StoreUnwritableError(f"cannot write {what} under {folder}: {e.strerror or e}")
