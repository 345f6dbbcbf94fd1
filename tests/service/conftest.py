"""Service fixtures: a Generator on the tiny model, apps built on it, a private Redis."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest
import redis as redis_lib

from config import Config, load_config
from tests.net import free_port


def service_config(redis_url: str, **service_overrides) -> Config:
    """The repo's config with the test Redis and small batching windows."""
    overrides = [f"service.cache.redis_url={redis_url}"]
    overrides += [f"service.{k}={v}" for k, v in service_overrides.items()]
    return load_config(None, overrides)


class CountingGenerator:
    """A real Generator that counts model calls and prompts (for single-flight and batching)."""

    def __init__(self, inner, version: str | None = None, delay: float = 0.0):
        self.inner = inner
        self.info = dict(inner.info)
        if version:
            self.info["version"] = version
        self.eval_scores = getattr(inner, "eval_scores", {})
        self.delay = delay
        self.calls = 0
        self.prompts = 0
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()

    def prompt(self, **kw):
        return self.inner.prompt(**kw)

    def count_tokens(self, text):
        return self.inner.count_tokens(text)

    def _count(self, prompts: int) -> None:
        """One model call of ``prompts`` prompts (then the configured delay)."""
        with self._lock:
            self.calls += 1
            self.prompts += prompts
            self.batch_sizes.append(prompts)
        if self.delay:
            time.sleep(self.delay)

    def generate(self, prompts, settings):
        self._count(len(prompts))
        return self.inner.generate(prompts, settings)

    def open_batch(self):
        """The inner Generator's continuous batch, counting each prefill as a call of its size."""
        counter, batch = self, self.inner.open_batch()

        class Counted:
            def add(self, items):
                counter._count(len(items))
                batch.add(items)

            def step(self, on_done=None, refill=None):
                return batch.step(on_done, refill)

            def __len__(self):
                return len(batch)

            @property
            def can_join(self):
                return batch.can_join

        return Counted()


@pytest.fixture(scope="session")
def tiny_generator(tiny_model_dir):
    from trainer.generation import Generator
    from trainer.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    return Generator(model, tokenizer, load_config(), name="tiny", run=None, version="tiny0001")


@pytest.fixture()
def redis_client(redis_url):
    client = redis_lib.Redis.from_url(redis_url)
    try:
        client.ping()
    except redis_lib.RedisError as exc:
        pytest.skip(f"test Redis at {redis_url} not reachable: {exc}")
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture()
def make_app(redis_client, redis_url, tiny_generator):
    """make_app(generator=None, **service_overrides) -> Flask app on the tiny model."""
    apps = []

    def factory(generator=None, *, config: Config | None = None, **overrides):
        from service import create_app

        cfg = config or service_config(redis_url, **overrides)
        app = create_app(cfg, generator=generator or tiny_generator)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["headline"].close()


@pytest.fixture()
def client(make_app):
    return make_app().test_client()


@pytest.fixture()
def private_redis(tmp_path):
    """A redis-server of our own on a free port, to stop and restart mid-test."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    port = free_port()

    class Server:
        url = f"redis://127.0.0.1:{port}/0"
        proc: subprocess.Popen | None = None

        def start(self):
            self.proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            client = redis_lib.Redis(port=port)
            for _ in range(200):
                try:
                    client.ping()
                    return
                except redis_lib.RedisError:
                    time.sleep(0.02)
            raise RuntimeError("private redis-server did not start")

        def stop(self):
            if self.proc is not None:
                self.proc.terminate()
                self.proc.wait(10)
                self.proc = None

    server = Server()
    server.start()
    yield server
    server.stop()


def env_without_proxy() -> dict:
    env = dict(os.environ)
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(key, None)
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env
