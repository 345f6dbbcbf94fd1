"""The Train screen against the real trainer CLI on a tiny random GPT-2 (3 steps, ~15 s)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable, ProgressBar

from config import ConfigDocument
from tests.tui.conftest import FIXTURE_CONFIG, SIZE
from tests.tui.helpers import go, wait_for
from tui.app import WizardApp


def tiny_config(path: Path, model_dir: Path, repo_root: Path, runs: Path) -> Path:
    doc = ConfigDocument.read(FIXTURE_CONFIG)
    for key, value in {
        "model.name": str(model_dir),
        "data.source": str(repo_root / "data" / "sample_news.jsonl"),
        "data.max_examples": 40,
        "train.output_dir": str(runs),
        "train.max_steps": 3,
        "train.warmup_steps": 0,
        "train.batch_size": 4,
        "train.eval_steps": 1,
        "train.save_steps": 1,
        "train.logging_steps": 1,
        "train.num_threads": 1,
        "eval.max_examples": 4,
        "eval.batch_size": 4,
        "eval.compare_base": False,
        "generation.max_new_tokens": 4,
    }.items():
        doc.set(key, value)
    doc.save(path)
    return path


async def test_real_trainer_run_shows_progress_and_metrics(tmp_path, monkeypatch, tiny_model_dir, repo_root):
    if not (repo_root / "trainer" / "cli.py").exists():
        pytest.skip("trainer CLI not available")
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "config.yml", tiny_model_dir, repo_root, tmp_path / "runs")
    app = WizardApp(config)  # the default command: python -m trainer.cli
    async with app.run_test(size=SIZE) as pilot:
        assert app.state.model_kind == "local" and app.state.valid
        await go(pilot, "train")
        screen = app.screen
        await pilot.click("#next")
        await wait_for(pilot, lambda: screen.outcome is not None and not screen.running, timeout=400)
        log = "\n".join(screen.query_one("#log-tail").lines)
        assert screen.outcome == "finished", log
        bar = screen.query_one("#progress", ProgressBar)
        assert bar.total == 3 and bar.progress == 3
        assert screen.query_one("#train-loss").values
        assert screen.query_one("#val-loss").values
        table = screen.query_one("#eval-table", DataTable)
        assert table.row_count > 0 and "fine_tuned" in [str(c.label) for c in table.columns.values()]
        assert screen.run_dir and Path(screen.run_dir).is_dir()
