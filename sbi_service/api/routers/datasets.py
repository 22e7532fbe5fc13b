"""Datasets: upload simulation sets (.npz of theta, x) that train jobs read.

``POST /v1/datasets`` takes the raw .npz bytes as the body (``application/octet-stream``,
up to ``max_upload_bytes``). Bigger sets use a resumable upload: ``POST
/v1/datasets/uploads {"size", "sha256"}``, then ``PUT .../uploads/{id}/chunks/{index}``
for each chunk (again after a failure; ``GET .../uploads/{id}`` lists what is missing),
then ``POST .../uploads/{id}/complete``. The logic is ``sbi_service.workflows.datasets``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from sbi_service.api.deps import ServiceState, get_state, read_access, require_key
from sbi_service.api.errors import ApiError, field_error
from sbi_service.api.schemas import DatasetInfo, ErrorResponse, StartUpload, UploadStatus
from sbi_service.errors import UserError
from sbi_service.workflows import datasets

router = APIRouter(
    prefix="/v1/datasets",
    tags=["datasets"],
    responses={code: {"model": ErrorResponse} for code in (401, 403, 404, 413, 422)},
)
NPZ_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


async def _octets(request: Request) -> bytes:
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/octet-stream":
        raise ApiError(415, "Content-Type", "send the .npz bytes as application/octet-stream")
    data = await request.body()
    if not data:
        raise ApiError(422, "body", "the body is empty: send the .npz bytes")
    return data


@router.post(
    "",
    status_code=201,
    response_model=DatasetInfo,
    dependencies=[Depends(require_key)],
    openapi_extra=NPZ_BODY,
    responses={415: {"model": ErrorResponse}},
)
async def upload(request: Request, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    """Store an .npz of theta (N, dim_theta) and x (N, *x_shape); 201 with its id."""
    data = await _octets(request)
    try:
        return await asyncio.to_thread(datasets.add_dataset, state.store, data)
    except UserError as e:
        raise field_error(e, "body") from None


@router.post(
    "/uploads", status_code=201, response_model=UploadStatus, dependencies=[Depends(require_key)]
)
async def start_upload(body: StartUpload, state: ServiceState = Depends(get_state)) -> dict:
    """Open a resumable upload of ``size`` bytes whose sha256 is ``sha256``."""
    try:
        return await asyncio.to_thread(datasets.start_upload, state.store, body.size, body.sha256)
    except UserError as e:
        raise field_error(e, "size") from None


@router.get(
    "/uploads/{upload_id}", response_model=UploadStatus, dependencies=[Depends(require_key)]
)
async def upload_status(upload_id: str, state: ServiceState = Depends(get_state)) -> dict:
    """Which chunks arrived and which are missing."""
    try:
        return await asyncio.to_thread(datasets.upload_status, state.store, upload_id)
    except UserError as e:
        raise field_error(e, "upload_id") from None


@router.put(
    "/uploads/{upload_id}/chunks/{index}",
    response_model=UploadStatus,
    dependencies=[Depends(require_key)],
    openapi_extra=NPZ_BODY,
    responses={415: {"model": ErrorResponse}},
)
async def put_chunk(
    upload_id: str, index: int, request: Request, state: ServiceState = Depends(get_state)
) -> dict:
    """Chunk ``index`` (0-based) of the file: ``chunk_bytes`` long, the last one shorter."""
    data = await _octets(request)
    try:
        return await asyncio.to_thread(datasets.put_chunk, state.store, upload_id, index, data)
    except UserError as e:
        raise field_error(e, "index" if "index" in str(e) else "body") from None


@router.post(
    "/uploads/{upload_id}/complete",
    status_code=201,
    response_model=DatasetInfo,
    dependencies=[Depends(require_key)],
)
async def complete(upload_id: str, state: ServiceState = Depends(get_state)) -> dict:
    """Join the chunks, check the declared sha256, store the dataset."""
    try:
        return await asyncio.to_thread(datasets.complete_upload, state.store, upload_id)
    except UserError as e:
        raise field_error(e, "upload_id") from None


@router.get("/{dataset_id}", response_model=DatasetInfo, dependencies=[Depends(read_access)])
async def get_dataset(dataset_id: str, state: ServiceState = Depends(get_state)) -> dict:
    """A stored dataset's record."""
    try:
        return await asyncio.to_thread(datasets.get_dataset, state.store, dataset_id)
    except UserError as e:
        raise field_error(e, "dataset_id") from None
