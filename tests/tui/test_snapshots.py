"""Snapshots of every screen at 100×30 (plus 80×24 and the light theme), against a stable
config copy (tests/tui/fixtures/config.yml) in a temp working directory, so nothing on
screen depends on where or when the tests run. Update with `--snapshot-update`."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable

from tests.tui.helpers import go, type_into, wait_for
from tui.app import WizardApp

SIZE = (100, 30)


def wizard() -> WizardApp:
    return WizardApp("config.yml", trainer_cmd=["./fake-trainer"])


def at(step: str, then=None):
    async def run_before(pilot) -> None:
        await go(pilot, step)
        if then is not None:
            await then(pilot)
        await pilot.app.workers.wait_for_complete()
        pilot.app.clear_notifications()
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("step", ["model", "prompt", "generation", "review"])
def test_step(step, in_tmp, snap_compare):
    assert snap_compare(wizard(), terminal_size=SIZE, run_before=at(step))


def test_model_with_lora(in_tmp, snap_compare):
    async def lora(pilot):
        pilot.app.screen.query_one("#model__method").value = "lora"
        await pilot.pause()

    assert snap_compare(wizard(), terminal_size=SIZE, run_before=at("model", lora))


def test_data_with_preview_and_report(in_tmp, snap_compare):
    async def loaded(pilot):
        table = pilot.app.screen.query_one("#preview-table", DataTable)
        await wait_for(pilot, lambda: table.row_count == 3)
        await pilot.press("r")
        await wait_for(pilot, lambda: pilot.app.data_report is not None)
        pilot.app.screen.query_one("#body").scroll_end(animate=False)

    assert snap_compare(wizard(), terminal_size=SIZE, run_before=at("data", loaded))


def test_training_with_estimate_and_invalid_field(in_tmp, snap_compare):
    async def invalid(pilot):
        await pilot.click("#count")
        await wait_for(pilot, lambda: pilot.app.data_report is not None)
        await pilot.pause()
        await type_into(pilot, "train.batch_size", "0")

    assert snap_compare(wizard(), terminal_size=SIZE, run_before=at("training", invalid))


def test_review_with_changes_and_errors(in_tmp, snap_compare):
    async def changes(pilot):
        await go(pilot, "training")
        await type_into(pilot, "train.learning_rate", "3e-5")
        await type_into(pilot, "train.max_steps", "5")
        await go(pilot, "review")

    assert snap_compare(wizard(), terminal_size=SIZE, run_before=at("model", changes))


def test_train_finished(in_tmp, snap_compare, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_QUIET", "1")

    async def finished(pilot):
        screen = pilot.app.screen
        await pilot.click("#next")
        await wait_for(pilot, lambda: screen.outcome == "finished" and not screen.running)
        await pilot.pause()
        screen.query_one("#body").scroll_end(animate=False)

    assert snap_compare(wizard(), terminal_size=SIZE, run_before=at("train", finished))


def test_broken_config_dialog(in_tmp, snap_compare):
    (in_tmp / "config.yml").write_text("train:\n  epochs: 3\n  batch_size: [8\n")
    assert snap_compare(wizard(), terminal_size=SIZE)


def test_help_dialog(in_tmp, snap_compare):
    assert snap_compare(wizard(), terminal_size=SIZE, press=["f1"])


def test_unsaved_dialog(in_tmp, snap_compare):
    async def quit_dirty(pilot):
        await type_into(pilot, "model.cache_dir", "/tmp/models")
        await pilot.press("ctrl+q")

    assert snap_compare(wizard(), terminal_size=SIZE, run_before=at("model", quit_dirty))


def test_small_terminal(in_tmp, snap_compare):
    assert snap_compare(wizard(), terminal_size=(80, 24), run_before=at("training"))


def test_light_theme(in_tmp, snap_compare):
    async def light(pilot):
        pilot.app.theme = "textual-light"
        await pilot.pause()

    assert snap_compare(wizard(), terminal_size=SIZE, run_before=at("prompt", light))
