"""Fixtures for the security, bad-input and fault tests: a private Redis, configs with auth on,
a keys file with one key per scope, and the tiny model's Generator."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from config import Config, load_config
from tests.net import free_port, wait_port


class RedisServer:
    """A redis-server of our own on a free loopback port (never the shared one)."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.binary = shutil.which("redis-server")
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="module")
def private_redis_url(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


def make_config(keys_file: Path | str, redis_url: str, *overrides: str, auth: bool = True) -> Config:
    return load_config(None, [
        f"service.auth.enabled={'true' if auth else 'false'}",
        f"service.auth.keys_file={keys_file}",
        f"service.cache.redis_url={redis_url}",
        *overrides,
    ])


@pytest.fixture()
def keys(tmp_path):
    """A keys file with one key per scope set: {"path", "generate", "admin", "both", "store"}."""
    from service.auth import KeyStore

    path = tmp_path / "secrets" / "api_keys.json"
    store = KeyStore(path)
    result = {"path": path, "store": store}
    for name, scopes in (("generate", ["generate"]), ("admin", ["admin"]), ("both", ["generate", "admin"])):
        record, plain = store.create(name, scopes)
        result[name] = plain
        result[name + "_id"] = record.id
    return result


@pytest.fixture(scope="session")
def tiny_generator(tiny_model_dir):
    from trainer.generation import Generator
    from trainer.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    return Generator(model, tokenizer, load_config(), name="tiny", run=None, version="tiny0001")


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}
