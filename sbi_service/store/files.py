"""The files of a model version: checksums, containment under the home, leftovers of crashes.

Every file a save writes is hashed (sha256) before the folder is renamed into place,
and the digests are recorded in the database with the version (``Store``). Loading
checks each file against them first, so a truncated, altered or missing file is
refused with a ``ModelFileError`` naming the file, never served.

A save writes into a temporary folder ``.tmp-{owner}-{hex}`` beside its final place
(``models/{model}/`` for a version, ``models/{model}/{version}/`` for its diagnostic
report), where ``owner`` is ``{pid}.{start}``: the writer's process id and start time,
which together name one process even after its id is reused (a restarted container).
A replaced folder is first moved aside as ``.old-{owner}-{hex}-{name}``. A process
killed mid-save leaves such folders behind; the next ``Store`` opened on the home
removes the temporary ones whose process is gone, and puts a folder moved aside back
where the kill left its place empty (``remove_stale_tmp``).
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
OLD_PREFIX = ".old-"
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


def verify(
    folder: Path,
    expected: dict[str, dict[str, int | str]],
    what: str,
    remedy: str = "restore it or train a new version",
) -> None:
    """Raise ``ModelFileError`` unless every recorded file is present and unchanged.

    ``what`` names the folder in the message (e.g. "model 'tiny' version 2"), ``remedy``
    says what to do.
    """
    if not folder.is_dir():
        raise ModelFileError(f"{what}: its folder is missing from the store; {remedy}")
    for name, want in expected.items():
        path = folder / name
        if not path.is_file():
            raise ModelFileError(f"{what}: {name} is missing; {remedy}")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise ModelFileError(
                f"{what}: {name} has {size} bytes but {want['bytes']} were saved (truncated or "
                f"altered); refusing to load it: {remedy}"
            )
        if sha256(path) != want["sha256"]:
            raise ModelFileError(
                f"{what}: {name} does not match the sha256 recorded when it was saved (damaged "
                f"or altered); refusing to load it: {remedy}"
            )


def inside(home: Path, path: Path) -> Path:
    """``path``, if it lies under ``home`` once resolved; else ``UserError`` (never leave home)."""
    if not path.resolve().is_relative_to(home.resolve()):
        raise UserError(f"{path} lies outside the store {home}; refusing to use it")
    return path


def owner_token(pid: int | None = None) -> str:
    """``{pid}.{start}`` of process ``pid`` (this one by default): its id and start time in
    clock ticks since boot; ``{pid}`` alone where there is no /proc (macOS)."""
    pid = os.getpid() if pid is None else pid
    start = _start_time(pid)
    return f"{pid}.{start}" if start is not None else str(pid)


def tmp_folder(parent: Path) -> Path:
    """A fresh temporary folder name in ``parent`` that names this process."""
    return parent / f"{TMP_PREFIX}{owner_token()}-{uuid.uuid4().hex}"


def swap_in(tmp: Path, final: Path) -> Path | None:
    """Rename folder ``tmp`` to ``final``; an existing ``final`` is first moved aside, and
    that path is returned (remove it once the swap is recorded; None if there was none)."""
    old = None
    if final.exists():
        old = final.parent / f"{OLD_PREFIX}{owner_token()}-{uuid.uuid4().hex}-{final.name}"
        os.rename(final, old)
    os.rename(tmp, final)
    return old


def remove_stale_tmp(models_dir: Path) -> list[Path]:
    """Clean up after dead writers under ``models_dir``; returns the folders removed.

    Their temporary folders are removed; a folder they moved aside goes back to its
    place if that is empty (killed between the two renames of ``swap_in``), else is removed.
    """
    removed = []
    for pattern in ("*/", "*/*/"):
        for tmp in models_dir.glob(f"{pattern}{TMP_PREFIX}*"):
            if not _owner_alive(tmp.name[len(TMP_PREFIX) :]):
                _remove(tmp)
                removed.append(tmp)
        for old in models_dir.glob(f"{pattern}{OLD_PREFIX}*"):
            rest = old.name[len(OLD_PREFIX) :]
            if _owner_alive(rest):
                continue
            original = old.parent / rest.split("-", 2)[-1]
            if not original.exists():
                os.rename(old, original)
            else:
                _remove(old)
                removed.append(old)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)  # a writability probe


def _owner_alive(name: str) -> bool:
    """Whether the process named at the start of ``name`` (``{pid}[.{start}]-...``) runs.

    A zombie (killed, not yet reaped) does not; nor a process whose id was reused (its
    start time differs); a name without a process id (older releases) names none.
    """
    pid, _, start = name.split("-")[0].partition(".")
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS): the signal check is all there is
        return True
    fields = stat.rpartition(")")[2].split()
    return fields[0] != "Z" and (not start or fields[19] == start)


def _start_time(pid: int) -> str | None:
    """Process ``pid``'s start time in clock ticks after boot (field 22 of /proc/PID/stat)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def check_writable(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder``: ``StoreUnwritableError`` when that fails."""
    probe = folder / f"{TMP_PREFIX}{owner_token()}-probe-{uuid.uuid4().hex}"
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
