"""Run folders: creation, status, latest symlink, resolving and finding resumable runs."""

from __future__ import annotations

import json
import os

import pytest

from config import load_config
from trainer import runs
from trainer.errors import TrainerError


@pytest.fixture
def cfg(tmp_path):
    return load_config(None, [f"train.output_dir={tmp_path / 'runs'}", "train.run_name=test-run"])


def test_create_run_writes_status_and_a_config_that_loads_back_equal(cfg, tmp_path):
    run_dir = runs.create_run(cfg)
    assert run_dir.parent == tmp_path / "runs"
    assert runs.is_run_id(run_dir.name) and run_dir.name.endswith("-test-run")
    meta = runs.read_run(run_dir)
    assert meta["status"] == "running" and meta["run_id"] == run_dir.name
    assert meta["base_model"] == cfg.model.name and meta["version"] is None
    assert load_config(run_dir / "config.yml") == cfg
    assert oct(os.stat(run_dir / "run.json").st_mode & 0o777) == "0o644"


def test_lora_config_round_trips(tmp_path):
    cfg = load_config(None, [f"train.output_dir={tmp_path}", "model.method=lora",
                             "model.lora={r: 4, target_modules: [c_attn]}"])
    run_dir = runs.create_run(cfg)
    assert load_config(run_dir / "config.yml") == cfg


def test_two_runs_in_the_same_second_get_distinct_folders(cfg):
    a, b = runs.create_run(cfg), runs.create_run(cfg)
    assert a != b and a.is_dir() and b.is_dir()


def test_status_updates_merge(cfg):
    run_dir = runs.create_run(cfg)
    runs.set_status(run_dir, "finished", version="abc123abc123")
    meta = runs.read_run(run_dir)
    assert meta["status"] == "finished" and meta["version"] == "abc123abc123" and meta["finished"]
    assert meta["run_id"] == run_dir.name


def test_latest_is_a_relative_symlink_swapped_in_place(cfg, tmp_path):
    a, b = runs.create_run(cfg), runs.create_run(cfg)
    link = runs.update_latest(a)
    assert link.is_symlink() and os.readlink(link) == a.name
    runs.update_latest(b)
    assert os.readlink(link) == b.name
    assert [p.name for p in link.parent.iterdir() if p.name.startswith(".")] == []


def test_resolve_run_accepts_path_latest_and_id(cfg, tmp_path, monkeypatch):
    run_dir = runs.create_run(cfg)
    out = cfg.train.output_dir
    with pytest.raises(TrainerError, match="no finished run"):
        runs.resolve_run("latest", out)
    runs.update_latest(run_dir)
    assert runs.resolve_run(run_dir, out) == run_dir
    assert runs.resolve_run("latest", out) == run_dir
    assert runs.resolve_run(run_dir.name, out) == run_dir
    monkeypatch.chdir(tmp_path)
    assert runs.resolve_run("runs/latest", "runs") == run_dir
    with pytest.raises(TrainerError, match="no such run"):
        runs.resolve_run("nope", out)


def test_last_checkpoint_ignores_incomplete_ones(cfg):
    run_dir = runs.create_run(cfg)
    assert runs.last_checkpoint(run_dir) is None
    for step, complete in [(5, True), (10, True), (15, False)]:
        ck = run_dir / "checkpoints" / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        if complete:
            (ck / "trainer_state.json").write_text("{}")
    assert runs.last_checkpoint(run_dir).name == "checkpoint-10"


def test_find_resumable_picks_the_newest_unfinished_run_with_a_checkpoint(cfg):
    with pytest.raises(TrainerError, match="no unfinished run"):
        runs.find_resumable(cfg.train.output_dir, True)
    old, finished, fresh = (runs.create_run(cfg) for _ in range(3))
    for run_dir in (old, finished):
        ck = run_dir / "checkpoints" / "checkpoint-4"
        ck.mkdir(parents=True)
        (ck / "trainer_state.json").write_text(json.dumps({}))
    runs.set_status(finished, "finished")
    runs.set_status(old, "cancelled")
    # `fresh` is running but has no checkpoint yet, `finished` is done: `old` it is.
    assert runs.find_resumable(cfg.train.output_dir, True) == (old, old / "checkpoints" / "checkpoint-4")
    assert runs.find_resumable(cfg.train.output_dir, old.name)[0] == old
    with pytest.raises(TrainerError, match="already finished"):
        runs.find_resumable(cfg.train.output_dir, str(finished))
    with pytest.raises(TrainerError, match="no checkpoint"):
        runs.find_resumable(cfg.train.output_dir, str(fresh))
