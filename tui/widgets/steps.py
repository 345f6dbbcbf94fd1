"""The step indicator on top of every screen; a click on a step goes there."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from tui.messages import StepRequested


class StepLabel(Static):
    def __init__(self, step: str, title: str, number: int, current: bool):
        super().__init__(f" {number} {title} ", classes="step" + (" -current" if current else ""))
        self.step = step

    def on_click(self) -> None:
        self.post_message(StepRequested(self.step))


class StepIndicator(Horizontal):
    def __init__(self, steps: list[tuple[str, str]], current: str):
        super().__init__(id="steps")
        self.steps = steps
        self.current = current

    def compose(self) -> ComposeResult:
        for number, (step, title) in enumerate(self.steps, start=1):
            if number > 1:
                yield Static("›", classes="step-sep")
            yield StepLabel(step, title, number, step == self.current)

    def mark_invalid(self, invalid: set[str]) -> None:
        for label in self.query(StepLabel):
            label.set_class(label.step in invalid, "-invalid")
