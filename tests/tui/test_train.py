"""The Train screen against the fake trainer; import hygiene and start-up time."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from textual.widgets import Button, DataTable, Log, ProgressBar, Static

from tests.tui.conftest import SIZE
from tests.tui.helpers import go, wait_for
from tui.app import WizardApp
from tui.screens.train import TrainScreen, eval_table


def log_text(screen) -> str:
    return "\n".join(screen.query_one("#log-tail", Log).lines)


async def test_save_and_train_follows_progress_and_shows_metrics(in_tmp, fake_cmd):
    app = WizardApp("config.yml", trainer_cmd=fake_cmd)
    async with app.run_test(size=SIZE) as pilot:
        await go(pilot, "review")
        await pilot.click("#save-train")
        await pilot.pause()
        assert app.step == "train"
        screen = app.screen
        assert isinstance(screen, TrainScreen)
        await wait_for(pilot, lambda: screen.outcome == "finished" and not screen.running)
        bar = screen.query_one("#progress", ProgressBar)
        assert (bar.total, bar.progress) == (4, 4)
        stats = str(screen.query_one("#run-stats", Static).render())
        assert "step 4/4" in stats and "1,234 tokens/s" in stats and "ETA 0 s" in stats
        assert screen.query_one("#train-loss").values == [2.5, 2.0, 1.5, 1.0]
        assert screen.query_one("#val-loss").values == pytest.approx([2.1, 1.3])
        table = screen.query_one("#eval-table", DataTable)
        assert [str(c.label) for c in table.columns.values()] == ["metric", "base", "fine_tuned"]
        assert table.get_row_at(0) == ["val_loss", "3.2000", "1.3000"]
        assert table.get_row_at(2) == ["overall.rouge1", "0.1200", "0.3100"]
        samples = str(screen.query_one("#samples", Static).render())
        assert "fine-tuned: Council approves bike lanes" in samples
        assert "runs/20250101-000000-headline" in str(screen.query_one("#run-dir", Static).render())
        await wait_for(pilot, lambda: "step 4/4 loss" in log_text(screen))
    progress = (in_tmp / "runs" / ".wizard-progress.jsonl").read_text().splitlines()
    assert json.loads(progress[-1])["event"] == "done"


async def test_cancel_sends_sigint_then_resume(in_tmp, fake_cmd, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_STEPS", "200")
    monkeypatch.setenv("FAKE_TRAINER_DELAY", "0.05")
    app = WizardApp("config.yml", trainer_cmd=fake_cmd)
    async with app.run_test(size=SIZE) as pilot:
        await go(pilot, "train")
        screen = app.screen
        await pilot.click("#next")  # Start
        await wait_for(pilot, lambda: len(screen.query_one("#train-loss").values) >= 2)
        await pilot.press("escape")  # refused while running
        assert app.step == "train"
        await pilot.press("c")
        await wait_for(pilot, lambda: screen.outcome == "cancelled" and not screen.running)
        assert screen.trainer_run.returncode == 130  # the fake exits 130 only on SIGINT
        status = str(screen.query_one("#run-status", Static).render())
        assert "Cancelled. Checkpoint: runs/20250101-000000-headline/checkpoints/checkpoint-" in status
        resume = screen.query_one("#resume", Button)
        # The process has gone (running is False) a moment before its exit message is handled.
        await wait_for(pilot, lambda: resume.display)
        await pilot.click("#resume")
        # The new run starts asynchronously (on a loaded machine, after more than one pause).
        await wait_for(pilot, lambda: screen.trainer_run.argv[-2:] == ["--resume", "runs/20250101-000000-headline"])
        await wait_for(pilot, lambda: "resume=True" in log_text(screen))
        await pilot.press("c")
        await wait_for(pilot, lambda: not screen.running)


async def test_trainer_failure_is_shown(in_tmp, fake_cmd, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_FAIL", "1")
    app = WizardApp("config.yml", trainer_cmd=fake_cmd)
    async with app.run_test(size=SIZE) as pilot:
        await go(pilot, "train")
        screen = app.screen
        await pilot.click("#next")
        await wait_for(pilot, lambda: screen.outcome == "failed" and not screen.running)
        assert "cannot load 'nope'" in str(screen.query_one("#run-status", Static).render())
        await wait_for(pilot, lambda: "error: cannot load model" in log_text(screen))


async def test_training_needs_a_saved_config(in_tmp, fake_cmd):
    app = WizardApp("config.yml", trainer_cmd=fake_cmd)
    async with app.run_test(size=SIZE) as pilot:
        app.state.set_text("train.batch_size", "4")
        await go(pilot, "train")
        await pilot.click("#next")
        await pilot.pause()
        assert app.screen.trainer_run is None


def test_eval_table_shapes():
    columns, rows = eval_table({"base": {"rouge1": 0.1}, "fine_tuned": {"rouge1": 0.3}, "n": 50})
    assert columns == ["metric", "base", "fine_tuned", "value"]
    assert rows == [["rouge1", "0.1000", "0.3000", ""], ["n", "", "", "50"]]
    columns, rows = eval_table({"rouge1": {"base": 0.1, "fine_tuned": 0.3}})
    assert columns == ["metric", "base", "fine_tuned"] and rows == [["rouge1", "0.1000", "0.3000"]]


def test_wizard_imports_no_torch_and_starts_fast(repo_root):
    code = textwrap.dedent(
        """
        import json, sys, time
        t0, c0 = time.perf_counter(), time.process_time()
        import tui.app
        app = tui.app.WizardApp()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("torch", "transformers", "trainer", "service"))
        print(json.dumps({"elapsed": elapsed, "cpu": cpu, "heavy": heavy}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True,
                         text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    # CPU time, not wall time: the test machine is shared, and contention is not start-up cost.
    assert result["cpu"] < 1.0, result
    assert result["elapsed"] < 5.0, result
