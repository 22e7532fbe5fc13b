"""Uploaded datasets (one body, and resumable chunks), through REST and the CLI."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from test_api import AUTH, live_server, settings
from tiny_model import PRIOR, make_data

from sbi_service.errors import UserError
from sbi_service.store.db import Store
from sbi_service.workflows import datasets

OCTETS = {**AUTH, "Content-Type": "application/octet-stream"}


def npz_bytes(n: int = 50, **arrays: np.ndarray) -> bytes:
    out = io.BytesIO()
    g = np.random.default_rng(0)
    base = {"theta": g.uniform(-1, 1, (n, 2)), "x": g.normal(size=(n, 2))}
    np.savez(out, **{**base, **arrays})
    return out.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("datasets")
    with live_server(settings(folder, preload_models=[], max_upload_bytes=2**20)) as c:
        yield c, folder


def test_upload_get_and_refusals(server):
    client, folder = server
    data = npz_bytes()
    r = client.post("/v1/datasets", content=data, headers=OCTETS)
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["num_simulations"] == 50
    assert info["id"] == info["sha256"][:16] and info["x_shape"] == [2]
    assert client.get(f"/v1/datasets/{info['id']}").json() == info
    assert client.post("/v1/datasets", content=data, headers=OCTETS).json()["id"] == info["id"]
    before = sorted(p.name for p in (folder / "home" / "datasets").iterdir())
    for body, headers, status, field in [
        (data, AUTH, 415, "Content-Type"),
        (data, {"Content-Type": "application/octet-stream"}, 401, "Authorization"),
        (b"", OCTETS, 422, "body"),
        (b"not a zip", OCTETS, 422, "body"),
        (npz_bytes(x=np.zeros((49, 2))), OCTETS, 422, "body"),
        (npz_bytes(x=np.full((50, 2), np.nan)), OCTETS, 422, "body"),
        (b"0" * (2**20 + 1), OCTETS, 413, "body"),
    ]:
        r = client.post("/v1/datasets", content=body, headers=headers)
        assert r.status_code == status, (status, r.text)
        assert r.json()["detail"][0]["field"] == field
    r = client.post("/v1/datasets", content=npz_bytes(x=np.zeros((49, 2))), headers=OCTETS)
    assert "the uploaded .npz" in r.text and str(folder) not in r.text  # no server path
    assert client.get("/v1/datasets/0123456789abcdef").status_code == 404
    assert client.get("/v1/datasets/..%2F..%2Fetc").status_code in (404, 422)
    assert sorted(p.name for p in (folder / "home" / "datasets").iterdir()) == before
    assert 'status="500"' not in client.get("/metrics").text


def test_resumable_upload_with_checksum(server, monkeypatch):
    client, folder = server
    monkeypatch.setattr(datasets, "CHUNK_BYTES", 40_000)  # small chunks (the server's thread)
    data = npz_bytes(n=3000)
    size = len(data)
    sha = hashlib.sha256(data).hexdigest()
    r = client.post("/v1/datasets/uploads", json={"size": size, "sha256": sha}, headers=AUTH)
    assert r.status_code == 201, r.text
    up = r.json()
    step, n = up["chunk_bytes"], up["num_chunks"]
    assert n == -(-size // step) > 1 and up["missing"] == list(range(n))
    url = f"/v1/datasets/uploads/{up['upload_id']}"
    for i in reversed(range(1, n)):  # any order; chunk 0 not yet sent
        r = client.put(f"{url}/chunks/{i}", content=data[i * step : (i + 1) * step], headers=OCTETS)
        assert r.status_code == 200, r.text
    r = client.post(f"{url}/complete", headers=AUTH)
    assert r.status_code == 422 and "lacks chunk(s) 0" in r.text
    assert client.get(url, headers=AUTH).json()["missing"] == [0]  # where to resume
    r = client.put(f"{url}/chunks/0", content=data[: step - 1], headers=OCTETS)
    assert r.status_code == 422 and f"must be {step} bytes" in r.text
    r = client.put(f"{url}/chunks/{n}", content=data[:step], headers=OCTETS)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "index"
    client.put(f"{url}/chunks/0", content=data[:step], headers=OCTETS)
    r = client.post(f"{url}/complete", headers=AUTH)
    assert (
        r.status_code == 201 and r.json()["sha256"] == sha and r.json()["num_simulations"] == 3000
    )
    assert client.get(url, headers=AUTH).status_code == 404  # completed: gone
    # a checksum that does not match: refused, the upload discarded, no dataset added
    count = len(list((folder / "home" / "datasets").iterdir()))
    r = client.post(
        "/v1/datasets/uploads", json={"size": size, "sha256": "0" * 64}, headers=AUTH
    ).json()
    url = f"/v1/datasets/uploads/{r['upload_id']}"
    for i in range(r["num_chunks"]):
        client.put(f"{url}/chunks/{i}", content=data[i * step : (i + 1) * step], headers=OCTETS)
    r = client.post(f"{url}/complete", headers=AUTH)
    assert r.status_code == 422 and "not the 000" in r.text and "discarded" in r.text
    assert len(list((folder / "home" / "datasets").iterdir())) == count
    r = client.post("/v1/datasets/uploads", json={"size": 10, "sha256": "xyz"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "sha256"
    assert client.get("/v1/datasets/uploads/../../x", headers=AUTH).status_code in (404, 422)


def test_zip_bombs_are_refused_before_unpacking(tmp_path):
    out = io.BytesIO()
    np.savez_compressed(out, theta=np.zeros((200_000, 2)), x=np.zeros((200_000, 2)))
    with pytest.raises(UserError, match="unpacks to"):
        datasets.add_dataset(Store(tmp_path / "home"), out.getvalue())


def test_cli_dataset_and_train_from_it(home, tmp_path, run_cli):
    path = make_data(tmp_path, n=300)
    code, out, err = run_cli("datasets", "add", str(path))
    assert code == 0, err
    info = json.loads(out)
    code, out, _ = run_cli("datasets", "show", info["id"])
    assert json.loads(out)["num_simulations"] == 300
    assert run_cli("datasets", "show", "../etc")[0] == 2
    code, out, err = run_cli(
        "train", "--dataset", info["id"], "--prior", str(tmp_path / "prior.json"),
        "--name", "from_ds", "--max-epochs", "1", "--options",
        json.dumps({"transforms": 1, "hidden_features": [8]}), "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["simulator"] is None and len(summary["data_sha256"]) == 64
    config = Store(home).get_model_version("from_ds")["config"]
    assert config["dataset"] == info["id"] and config["prior"] == PRIOR
