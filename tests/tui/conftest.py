"""Fixtures for the wizard's tests: a config copy, the fake trainer, a wizard factory."""

from __future__ import annotations

import asyncio
import inspect
import shutil
import stat
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FAKE_TRAINER = HERE / "fake_trainer.py"
FIXTURE_CONFIG = HERE / "fixtures" / "config.yml"
REPO_CONFIG = HERE.parent.parent / "config" / "config.yml"
SIZE = (100, 30)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """A copy of the repository's config/config.yml to edit."""
    path = tmp_path / "config.yml"
    shutil.copyfile(REPO_CONFIG, path)
    return path


@pytest.fixture
def fake_cmd() -> list[str]:
    return [sys.executable, str(FAKE_TRAINER)]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path (runs/ and the progress file land there), with a stable config copy
    and a ./fake-trainer wrapper, so that nothing on screen depends on where tests run."""
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(FIXTURE_CONFIG, tmp_path / "config.yml")
    wrapper = tmp_path / "fake-trainer"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_TRAINER}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return tmp_path


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Run `async def` tests in a fresh event loop (no asyncio plugin needed)."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        asyncio.run(pyfuncitem.obj(**args))
        return True
    return None
