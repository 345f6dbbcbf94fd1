"""service/lambda_handler.py: real API Gateway HTTP API (payload 2.0) events through
apig-wsgi give what the Flask app itself answers; the S3 run fetch unpacks safely."""

from __future__ import annotations

import base64
import copy
import io
import json
import sys
import tarfile
import types
from pathlib import Path

import pytest

EVENTS = Path(__file__).with_name("events")


class Context:
    """The attributes of a Lambda context object that apig-wsgi reads."""

    aws_request_id = "5b1a3c8e-0d2f-4b6a-9c7e-1f2e3d4c5b6a"
    function_name = "headline-studio-prod-api"
    memory_limit_in_mb = 3008

    def get_remaining_time_in_millis(self) -> int:
        return 30000


def _event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def overrides(tiny_model_dir):
    return [f"service.model={tiny_model_dir}", "service.cache.enabled=false", "service.batching.enabled=false"]


@pytest.fixture(scope="module")
def flask_client(overrides):
    try:
        from service import create_app
    except ImportError as exc:
        pytest.skip(f"service.create_app not available yet: {exc}")
    from config import load_config

    return create_app(load_config(None, overrides)).test_client()


@pytest.fixture()
def handler(monkeypatch, overrides, flask_client):
    from service import lambda_handler

    for var in ("HEADLINE_MODEL_BUCKET", "HEADLINE_MODEL_KEY", "HEADLINE_REDIS_URL", "HEADLINE_CONFIG",
                "HEADLINE_MODEL", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HEADLINE_CONFIG_SET", " ".join(overrides))
    # build_app's quiet start would freeze this test process's objects (gc.freeze): the
    # start's collector handling is tested in a process of its own (tests/service/test_startup.py).
    monkeypatch.setenv("HEADLINE_STARTUP_GC", "on")
    monkeypatch.setattr(lambda_handler, "_handler", None)
    return lambda_handler.handler


def _body(response: dict) -> bytes:
    body = response.get("body", "")
    return base64.b64decode(body) if response.get("isBase64Encoded") else body.encode("utf-8")


def _headers(response: dict) -> dict:
    return {k.lower(): v for k, v in response["headers"].items()}


def test_post_prompt_event_matches_flask(handler, flask_client):
    event = _event("apigw_v2_post_prompt.json")
    response = handler(event, Context())
    expected = flask_client.post("/prompt", json=json.loads(event["body"]))
    assert response["statusCode"] == expected.status_code == 200
    assert json.loads(_body(response)) == expected.get_json()
    assert isinstance(expected.get_json()["response"], str)
    assert _headers(response)["content-type"] == expected.headers["Content-Type"]
    assert _headers(response).get("x-cache") == expected.headers.get("X-Cache")


def test_base64_body_event_is_decoded(handler, flask_client):
    """API Gateway may deliver the body base64-encoded; the answer must not change."""
    event = copy.deepcopy(_event("apigw_v2_post_prompt.json"))
    event["body"] = base64.b64encode(event["body"].encode()).decode()
    event["isBase64Encoded"] = True
    response = handler(event, Context())
    expected = flask_client.post("/prompt", json={"prompt": "oil price", "max_len": 50})
    assert response["statusCode"] == 200
    assert json.loads(_body(response)) == expected.get_json()


def test_get_readyz_event_matches_flask(handler, flask_client):
    response = handler(_event("apigw_v2_get_readyz.json"), Context())
    expected = flask_client.get("/readyz")
    assert response["statusCode"] == expected.status_code == 200
    assert json.loads(_body(response)) == expected.get_json()
    assert _headers(response)["content-type"] == expected.headers["Content-Type"]


def test_invalid_input_gives_the_same_422(handler, flask_client):
    event = copy.deepcopy(_event("apigw_v2_post_prompt.json"))
    event["body"] = json.dumps({"prompt": "oil price", "max_len": -1})
    response = handler(event, Context())
    expected = flask_client.post("/prompt", json={"prompt": "oil price", "max_len": -1})
    assert response["statusCode"] == expected.status_code == 422
    assert json.loads(_body(response)) == expected.get_json()


def test_app_is_built_once_per_container(handler, monkeypatch):
    from service import lambda_handler

    calls = []
    real = lambda_handler.build_app
    monkeypatch.setattr(lambda_handler, "build_app", lambda: calls.append(1) or real())
    for _ in range(3):
        assert handler(_event("apigw_v2_get_readyz.json"), Context())["statusCode"] == 200
    assert calls == [1]


def _fake_boto3(archive: bytes, downloads: list):
    def download_file(bucket, key, filename):
        downloads.append((bucket, key))
        Path(filename).write_bytes(archive)

    client = types.SimpleNamespace(download_file=download_file)
    return types.SimpleNamespace(client=lambda name: client)


def _tarball(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_fetch_run_downloads_once_and_sets_service_model(tmp_path, monkeypatch):
    from service import lambda_handler

    downloads: list = []
    archive = _tarball({"run.json": b'{"version": "abc"}', "model/config.json": b"{}"})
    monkeypatch.setitem(sys.modules, "boto3", _fake_boto3(archive, downloads))
    env = {"HEADLINE_MODEL_BUCKET": "models", "HEADLINE_MODEL_KEY": "runs/latest.tar.gz",
           "HEADLINE_MODEL_DIR": str(tmp_path / "run"), "HEADLINE_REDIS_URL": "rediss://:t@cache:6379/0"}
    overrides = lambda_handler.overrides_from_env(env)
    assert overrides == ["service.cache.redis_url=rediss://:t@cache:6379/0", f"service.model={tmp_path / 'run'}"]
    assert (tmp_path / "run" / "model" / "config.json").exists()
    lambda_handler.overrides_from_env(env)  # a warm container does not download again
    assert downloads == [("models", "runs/latest.tar.gz")]


def test_fetch_run_refuses_paths_outside_the_folder(tmp_path, monkeypatch):
    from service import lambda_handler

    archive = _tarball({"../escape.txt": b"x"})
    monkeypatch.setitem(sys.modules, "boto3", _fake_boto3(archive, []))
    with pytest.raises(tarfile.TarError):
        lambda_handler.fetch_run("models", "bad.tar.gz", tmp_path / "run")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "run").exists()
