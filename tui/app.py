"""Headline Studio wizard: a full-screen Textual app that edits config.yml and runs training.

``headline wizard [--config PATH]`` and ``headline-wizard`` call ``main(argv)``. The wizard
imports ``config`` only (plus Textual and the standard library): the trainer runs as a
subprocess, so the wizard opens instantly and never loads torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.message_pump import MessagePump

from config import DEFAULT_CONFIG_PATH, ConfigDocument, ConfigError
from tui.messages import DataLoaded, StepRequested
from tui.runner import TrainerCommandError, run_json
from tui.screens.base import STEPS, StepScreen
from tui.screens.data import DataScreen
from tui.screens.dialogs import HelpDialog, broken_config_dialog, unsaved_dialog
from tui.screens.generation import GenerationScreen
from tui.screens.model import ModelScreen
from tui.screens.prompt import PromptScreen
from tui.screens.review import ReviewScreen
from tui.screens.train import TrainScreen
from tui.screens.training import TrainingScreen
from tui.state import WizardState, defaults_document, display_path

DEFAULT_TRAINER_CMD = [sys.executable, "-m", "trainer.cli"]
PREVIEW_ROWS = 5
SCREENS: dict[str, type[StepScreen]] = {
    "model": ModelScreen,
    "data": DataScreen,
    "prompt": PromptScreen,
    "training": TrainingScreen,
    "generation": GenerationScreen,
    "review": ReviewScreen,
    "train": TrainScreen,
}
STEP_NAMES = [name for name, _ in STEPS]


class WizardApp(App):
    """The wizard; ``trainer_cmd`` is how the trainer CLI is run (tests pass a fake one)."""

    CSS_PATH = "wizard.tcss"
    TITLE = "Headline Studio wizard"
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("f1", "help", "Help", show=False),
        Binding("ctrl+s", "save", "Save", show=False),
    ]

    def __init__(
        self,
        config_path: str | Path | None = None,
        trainer_cmd: list[str] | None = None,
    ):
        super().__init__()
        self.config_path = Path(config_path or DEFAULT_CONFIG_PATH)
        self.trainer_cmd = list(trainer_cmd or DEFAULT_TRAINER_CMD)
        self.state: WizardState = None  # type: ignore[assignment]  # set on mount
        self.data_preview: dict[str, Any] | None = None
        self.data_report: dict[str, Any] | None = None
        self.load_error: str | None = None

    # -- opening ------------------------------------------------------------------------
    def on_mount(self) -> None:
        try:
            doc = ConfigDocument.read(self.config_path)
        except ConfigError as exc:
            self.load_error = "\n".join(m for _, m in exc.errors)
            self.push_screen(
                broken_config_dialog(display_path(self.config_path), self.load_error),
                self._broken_choice,
            )
            return
        self._start(WizardState(doc, self.config_path))

    def _broken_choice(self, choice: str | None) -> None:
        if choice != "defaults":
            self.exit(return_code=1)
            return
        try:
            before = self.config_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            before = ""
        doc = defaults_document(self.config_path)
        self._start(WizardState(doc, self.config_path, before_text=before, from_defaults=True))

    def _start(self, state: WizardState) -> None:
        self.state = state
        for name, cls in SCREENS.items():
            self.install_screen(cls(), name=name)
        self.push_screen("model")

    # -- navigation ---------------------------------------------------------------------
    @property
    def step(self) -> str | None:
        screen = self.screen
        return screen.STEP if isinstance(screen, StepScreen) else None

    def go(self, step: str) -> None:
        if self.step is not None and step != self.step:
            self.switch_screen(step)

    def _leave_allowed(self) -> bool:
        screen = self.screen
        if isinstance(screen, StepScreen) and screen.invalid_here():
            screen.refresh_from_state()
            screen.focus_first_invalid()
            bad = screen.invalid_here()
            self.notify(f"{bad[0]}: {self.state.errors[bad[0]]}", title="Fix this value first",
                        severity="error")
            return False
        return True

    def action_next(self) -> None:
        step = self.step
        if step is None or not self._leave_allowed():
            return
        if step == "review":
            if self.action_save():
                self.switch_screen("train")
                self.call_after_refresh(self._start_training)
            return
        if step == "train":
            self._start_training()
            return
        self.go(STEP_NAMES[STEP_NAMES.index(step) + 1])

    def _start_training(self) -> None:
        screen = self.get_screen("train")
        assert isinstance(screen, TrainScreen)
        if self.state.dirty or not self.state.valid:
            self.notify("Save a valid config first (Review screen).", severity="error")
            return
        screen.start()

    def action_back(self) -> None:
        step = self.step
        if step is None:
            return
        if step == "train" and self.get_screen("train").running:  # type: ignore[attr-defined]
            self.notify("Training is running: cancel it first (c).", severity="warning")
            return
        index = STEP_NAMES.index(step)
        if index > 0:
            self.go(STEP_NAMES[index - 1])

    def on_step_requested(self, message: StepRequested) -> None:
        step = self.step
        if step is None or message.step == step:
            return
        forward = STEP_NAMES.index(message.step) > STEP_NAMES.index(step)
        if forward and not self._leave_allowed():
            return
        if step == "train" and self.get_screen("train").running:  # type: ignore[attr-defined]
            self.notify("Training is running: cancel it first (c).", severity="warning")
            return
        self.go(message.step)

    # -- saving, help, quitting ---------------------------------------------------------
    def action_save(self) -> bool:
        if self.state is None:
            return False
        if not self.state.valid:
            bad = self.state.invalid_keys()
            first = f"{bad[0]}: {self.state.errors[bad[0]]}" if bad else self.state.general_errors[0]
            self.notify(f"Not saved: {first}", title="Invalid config", severity="error")
            return False
        try:
            path = self.state.save()
        except (ConfigError, OSError) as exc:
            self.notify(f"Not saved: {exc}", severity="error")
            return False
        self.notify(f"Saved {display_path(path)}", title="Saved")
        for name in SCREENS:
            screen = self.get_screen(name)
            if screen.is_mounted:
                screen.sync_texts()  # type: ignore[attr-defined]
                screen.refresh_from_state()  # type: ignore[attr-defined]
        return True

    def action_help(self) -> None:
        screen = self.screen
        if isinstance(screen, HelpDialog):
            return
        self.push_screen(HelpDialog(screen.HELP if isinstance(screen, StepScreen) else ""))

    async def action_quit(self) -> None:
        if self.state is None or not self.state.dirty:
            self._leave()
            return
        if self.screen.id == "unsaved":
            return
        self.push_screen(unsaved_dialog(), self._unsaved_choice)

    def _unsaved_choice(self, choice: str | None) -> None:
        if choice == "discard" or (choice == "save" and self.action_save()):
            self._leave()

    def _leave(self) -> None:
        if self.state is not None:
            screen = self.get_screen("train")
            screen.stop_for_exit()  # type: ignore[attr-defined]
        self.exit(return_code=0)

    # -- trainer CLI data calls ---------------------------------------------------------
    def run_data(self, kind: str, target: MessagePump) -> None:
        """``data preview`` / ``data report`` on the candidate config, in a thread worker."""
        args = {
            "preview": ["data", "preview", "--rows", str(PREVIEW_ROWS), "--json"],
            "report": ["data", "report", "--json"],
        }[kind]
        self._data_worker(kind, [*self.trainer_cmd, *args], self.state.candidate_text(), target)

    @work(thread=True, group="data")
    def _data_worker(self, kind: str, argv: list[str], config_text: str, target: MessagePump) -> None:
        try:
            data, error = run_json(argv, config_text), None
        except TrainerCommandError as exc:
            data, error = None, str(exc)
        self.call_from_thread(self._data_done, kind, data, error, target)

    def _data_done(self, kind: str, data: Any, error: str | None, target: MessagePump) -> None:
        if error is None:
            if kind == "preview":
                self.data_preview = data
            else:
                self.data_report = data
        target.post_message(DataLoaded(kind, data, error))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="headline wizard", description="Edit config.yml step by step and run training."
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="config file to edit")
    args = parser.parse_args(argv)
    app = WizardApp(config_path=args.config)
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
