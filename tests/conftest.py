"""Shared fixtures: a tiny random model folder, the repo's config, a Redis URL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests share 2 cores: keep each process to one torch thread and off the network.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random GPT-2 with a small BPE tokenizer, saved as a model folder."""
    from tests.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis (started by .ci/run / make test); tests use database 15."""
    return os.environ.get("HEADLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
