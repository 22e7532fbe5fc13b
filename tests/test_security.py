"""Security: no pickle on a load path, paths inside the home, keys on every mutation.

Also: keys compared in constant time and never logged, the TLS warning, hostile job
requests refused before they run.
"""

from __future__ import annotations

import ast
import hmac
import logging
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_model import make_data, train_tiny

import sbi_service
from sbi_service.api import deps
from sbi_service.api.app import create_app
from sbi_service.api.errors import all_routes
from sbi_service.api.server import build_server, tls_warning
from sbi_service.config import Settings
from sbi_service.errors import UserError
from sbi_service.store.db import Store, check_name

KEY = "s3cret-key-never-logged"
PACKAGE = Path(sbi_service.__file__).parent


# -- no pickle -------------------------------------------------------------------------------
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            yield node, owner, name


def test_no_pickle_on_any_load_path():
    """No pickle-family import, no torch.load, and every np.load says allow_pickle=False."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        where = path.relative_to(PACKAGE.parent)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                bad = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
                if any(n.split(".")[0] in bad for n in names):
                    problems.append(f"{where}:{node.lineno} imports {names}")
        for node, owner, name in _calls(tree):
            if owner == "torch" and name == "load":
                problems.append(f"{where}:{node.lineno} torch.load unpickles")
            if owner in ("np", "numpy") and name == "load":
                flag = {k.arg: k.value for k in node.keywords}.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where}:{node.lineno} np.load without allow_pickle=False")
    assert problems == []


# -- paths stay inside the home -----------------------------------------------------------------
HOSTILE_NAMES = [
    "m\n",
    "m\r",
    "../x",
    "a/b",
    "/etc",
    "..",
    ".",
    "a\\b",
    "x" * 65,
    "ｍodel",  # fullwidth letter
    "mod\u0435l",  # Cyrillic e
    "m\x00",
    "",
    " m",
    "m ",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_hostile_names_are_refused(name, tmp_path):
    with pytest.raises(UserError, match="not allowed"):
        check_name(name)
    with pytest.raises(UserError, match="not allowed"):
        Store(tmp_path).save_model_version(name, lambda folder: {})
    assert not any((tmp_path / "models").iterdir())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_accepted_name_stays_inside_the_home(name):
    try:
        check_name(name)
    except UserError:
        return
    home = Path("/srv/home")
    assert (home / "models" / name).resolve().parent == home / "models"
    assert name.isascii() and "\n" not in name and "/" not in name


def test_a_stored_path_outside_the_home_is_refused(app_home, tmp_path):
    import shutil
    import sqlite3

    shutil.copytree(app_home, tmp_path / "home")
    store = Store(tmp_path / "home")
    with sqlite3.connect(store.db_path) as db:
        db.execute("UPDATE model_versions SET path = '../../etc'")
    with pytest.raises(UserError, match="outside the store"):
        store.get_model_version("tiny")


# -- keys ------------------------------------------------------------------------------------
READ_ONLY_POSTS = {"/v1/models/{model}/samples", "/v1/models/{model}/log_prob"}


@pytest.fixture(scope="module")
def app_home(tmp_path_factory):
    folder = tmp_path_factory.mktemp("security")
    train_tiny(Store(folder / "home"), make_data(folder, n=300))
    return folder / "home"


@pytest.fixture
def client(app_home):
    app = create_app(Settings(home=app_home, api_keys=[KEY], reload_interval_s=0))
    with TestClient(app) as c:
        c.fastapi_app = app
        yield c


def mutating_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) of the app but GET/HEAD and the sampling reads."""
    out = []
    for route in all_routes(app.routes):
        if isinstance(route, APIRoute):
            for method in route.methods - {"GET", "HEAD"}:
                if route.path not in READ_ONLY_POSTS:
                    out.append((method, route.path))
    return sorted(out)


def test_every_mutating_route_needs_a_valid_key(client):
    routes = mutating_routes(client.fastapi_app)
    assert ("POST", "/v1/jobs") in routes and ("POST", "/v1/simulators") in routes
    for method, path in routes:
        url = path.replace("{", "").replace("}", "")  # any value for path parameters
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
            r = client.request(method, url, json={}, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["detail"][0]["field"] == "Authorization"


def test_keys_are_compared_in_constant_time_and_never_logged(client, monkeypatch, caplog):
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(
        deps.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b)
    )
    caplog.set_level(logging.DEBUG)
    job = {"kind": "diagnose", "model": "nope"}
    assert client.post("/v1/jobs", json=job, headers={"X-API-Key": KEY}).status_code == 422
    assert client.post("/v1/jobs", json=job, headers={"X-API-Key": KEY[:-1]}).status_code == 401
    assert (KEY[:-1].encode(), KEY.encode()) in compared
    assert KEY not in caplog.text and KEY[:-1] not in caplog.text


def test_serving_with_keys_without_tls_warns_how_to_add_it(app_home, caplog):
    keyed = Settings(home=app_home, api_keys=[KEY])
    message = tls_warning(keyed, "0.0.0.0", 8000)
    assert "--ssl-certfile" in message and "reverse proxy" in message and KEY not in message
    assert tls_warning(Settings(home=app_home), "0.0.0.0", 8000) is None
    with_tls = keyed.model_copy(update={"ssl_certfile": app_home / "c.pem"})
    assert tls_warning(with_tls, "0.0.0.0", 8000) is None
    with caplog.at_level(logging.WARNING):
        build_server(keyed, "127.0.0.1", 8000)
    assert "has no TLS" in caplog.text


# -- hostile job requests ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "job, field",
    [
        ({"kind": "diagnose", "model": "nope"}, "model"),
        ({"kind": "diagnose", "model": "tiny", "version": 9}, "version"),
        ({"kind": "diagnose", "model": "tiny", "report_dir": "/tmp/x"}, "report_dir"),
        ({"kind": "diagnose", "model": "tiny", "num_simulations": 10**9}, "num_simulations"),
        ({"kind": "diagnose", "model": "tiny", "data": "/etc/hostname"}, "data"),
        ({"kind": "diagnose", "model": "tiny", "dataset": "0" * 64}, "dataset"),
        (
            {
                "kind": "train",
                "name": "m",
                "simulator": "two_moons",
                "num_simulations": 10,
                "diagnose": {"data": "/etc/hostname", "report_dir": "/tmp/x"},
            },
            "diagnose.data",
        ),
        ({"kind": "train", "name": "m\n", "simulator": "two_moons", "num_simulations": 10}, "name"),
    ],
)
def test_hostile_jobs_are_refused_before_they_run(client, job, field):
    r = client.post("/v1/jobs", json=job, headers={"X-API-Key": KEY})
    assert r.status_code == 422, r.text
    assert field in [d["field"] for d in r.json()["detail"]], r.json()


def test_405_names_every_method_of_the_path(client):
    r = client.options("/v1/simulators")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    r = client.options("/v1/datasets/uploads")  # not a dataset id: a route of its own
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_request_bodies_are_bounded(app_home):
    app = create_app(Settings(home=app_home, api_keys=[KEY], max_body_bytes=4096))
    with TestClient(app) as c:
        big = {"observations": [[0.5, 0.5]] * 1000, "num_samples": 1}
        r = c.post("/v1/models/tiny/samples", json=big)
        assert r.status_code == 413 and r.json()["detail"][0]["field"] == "body"
        r = c.post("/v1/jobs", content=b"x" * 5000, headers={"X-API-Key": KEY})
        assert r.status_code == 413
