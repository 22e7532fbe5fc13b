"""Uploaded simulation sets: the .npz of (theta, x) a train job reads.

A dataset is the bytes of an .npz holding ``theta`` (N, dim_theta) and ``x``
(N, *x_shape) (``sbi_service.simulators.simulate.load_simulations`` checks them). Its
id is the first 16 hex digits of the file's sha256, so uploading the same file twice
gives the same id. Two ways in:

- one body (``add_dataset``), up to ``max_upload_bytes`` (100 MiB by default);
- a resumable upload for bigger sets: ``start_upload(size, sha256)`` answers an
  ``upload_id`` and the chunk size; each chunk ``put_chunk(upload_id, index, bytes)``
  (any order, again after a failure); ``upload_status`` lists the chunks received and
  missing; ``complete_upload`` joins them, checks the sha256 declared at the start and
  stores the dataset. A missing chunk or a checksum that does not match is a
  ``UserError``; the datasets are unchanged (a bad checksum discards the upload).

A file is checked in a temporary place and moved into ``datasets/`` only when good.
An .npz is a zip: one whose arrays would unpack to more than ``MAX_EXPANSION`` times
its size (a zip bomb; float data hardly compress) is refused before it is unpacked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

from sbi_service.errors import NotFoundError, UserError
from sbi_service.simulators.simulate import load_simulations
from sbi_service.store.db import Store

CHUNK_BYTES = 16 * 2**20
MAX_EXPANSION = 4
MAX_UPLOAD_TOTAL = 64 * 2**30
DATASET_ID = re.compile(r"^[0-9a-f]{16}$")
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_dataset_id(dataset_id: str) -> str:
    if not isinstance(dataset_id, str) or not DATASET_ID.match(dataset_id):
        raise UserError(f"dataset id {dataset_id!r} is not 16 lowercase hex digits")
    return dataset_id


def get_dataset(store: Store, dataset_id: str) -> dict[str, Any]:
    """{"id", "sha256", "num_simulations", "dim_theta", "x_shape", "bytes", "created_at"}."""
    return store.get_dataset(check_dataset_id(dataset_id))


def add_dataset(store: Store, data: bytes) -> dict[str, Any]:
    """Check and store one .npz body; returns the dataset's record."""
    folder = store.home / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return _store_file(store, Path(tmp), hashlib.sha256(data).hexdigest())


def _store_file(store: Store, file: Path, sha256: str) -> dict[str, Any]:
    try:
        _check_expansion(file)
        theta, x = load_simulations(file, label="the uploaded .npz")
        record = {
            "id": sha256[:16],
            "sha256": sha256,
            "num_simulations": int(theta.shape[0]),
            "dim_theta": int(theta.shape[1]),
            "x_shape": list(x.shape[1:]),
            "bytes": file.stat().st_size,
        }
        store.add_dataset(record, file)
    finally:
        file.unlink(missing_ok=True)
    return store.get_dataset(record["id"])


def _check_expansion(file: Path) -> None:
    try:
        with zipfile.ZipFile(file) as z:
            unpacked = sum(i.file_size for i in z.infolist())
    except zipfile.BadZipFile:
        raise UserError("the uploaded file is not an .npz (a zip of .npy arrays)") from None
    if unpacked > MAX_EXPANSION * file.stat().st_size + 2**20:
        raise UserError(
            f"the uploaded .npz unpacks to {unpacked} bytes from {file.stat().st_size}: "
            "upload it uncompressed (numpy.savez, not savez_compressed)"
        )


# -- resumable uploads -------------------------------------------------------------------
def _upload_dir(store: Store, upload_id: str) -> Path:
    if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id):
        raise UserError(f"upload id {upload_id!r} is not 32 lowercase hex digits")
    folder = store.home / "uploads" / upload_id
    if not (folder / "upload.json").exists():
        raise NotFoundError(f"upload {upload_id!r} does not exist (or was completed or discarded)")
    return folder


def start_upload(store: Store, size: int, sha256: str) -> dict[str, Any]:
    """Open a resumable upload of a file of ``size`` bytes whose sha256 is ``sha256``."""
    if not 1 <= size <= MAX_UPLOAD_TOTAL:
        raise UserError(f"size must be between 1 and {MAX_UPLOAD_TOTAL} bytes, got {size}")
    if not SHA256.match(sha256):
        raise UserError("sha256 must be 64 lowercase hex digits")
    upload_id = uuid.uuid4().hex
    folder = store.home / "uploads" / upload_id
    folder.mkdir(parents=True)
    meta = {"size": size, "sha256": sha256, "chunk_bytes": CHUNK_BYTES}
    (folder / "upload.json").write_text(json.dumps(meta))
    return upload_status(store, upload_id)


def upload_status(store: Store, upload_id: str) -> dict[str, Any]:
    """{"upload_id", "size", "sha256", "chunk_bytes", "num_chunks", "received", "missing"}."""
    folder = _upload_dir(store, upload_id)
    meta = json.loads((folder / "upload.json").read_text())
    num_chunks = -(-meta["size"] // meta["chunk_bytes"])
    received = sorted(int(p.stem.split("-")[1]) for p in folder.glob("chunk-*.part"))
    return {
        "upload_id": upload_id,
        **meta,
        "num_chunks": num_chunks,
        "received": received,
        "missing": sorted(set(range(num_chunks)) - set(received)),
    }


def put_chunk(store: Store, upload_id: str, index: int, data: bytes) -> dict[str, Any]:
    """Store chunk ``index`` (0-based; every chunk ``chunk_bytes`` long but the last)."""
    status = upload_status(store, upload_id)
    if not 0 <= index < status["num_chunks"]:
        raise UserError(f"chunk index must be in 0..{status['num_chunks'] - 1}, got {index}")
    expected = min(status["chunk_bytes"], status["size"] - index * status["chunk_bytes"])
    if len(data) != expected:
        raise UserError(f"chunk {index} must be {expected} bytes, got {len(data)}")
    folder = _upload_dir(store, upload_id)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, folder / f"chunk-{index:06d}.part")
    return upload_status(store, upload_id)


def complete_upload(store: Store, upload_id: str) -> dict[str, Any]:
    """Join the chunks, check the sha256, store the dataset; returns its record."""
    status = upload_status(store, upload_id)
    if status["missing"]:
        shown = ", ".join(map(str, status["missing"][:10]))
        raise UserError(
            f"upload {upload_id} lacks chunk(s) {shown} of {status['num_chunks']}: "
            "send them, then complete again"
        )
    folder = _upload_dir(store, upload_id)
    joined = folder / "joined.npz"
    digest = hashlib.sha256()
    with open(joined, "wb") as out:
        for i in range(status["num_chunks"]):
            data = (folder / f"chunk-{i:06d}.part").read_bytes()
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != status["sha256"]:
        shutil.rmtree(folder, ignore_errors=True)
        raise UserError(
            f"the joined upload has sha256 {digest.hexdigest()}, not the {status['sha256']} "
            "declared: the upload is discarded; start it again"
        )
    try:
        return _store_file(store, joined, status["sha256"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
