"""What every step screen shares: title line, step indicator, body, Back/Next bar, footer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Footer, Static

from tui.messages import FieldEdited
from tui.state import WizardState, display_path
from tui.widgets.field import FieldRow, field_id
from tui.widgets.steps import StepIndicator

if TYPE_CHECKING:
    from tui.app import WizardApp

STEPS: list[tuple[str, str]] = [
    ("model", "Model"),
    ("data", "Data"),
    ("prompt", "Prompt"),
    ("training", "Training"),
    ("generation", "Generation"),
    ("review", "Review"),
    ("train", "Train"),
]
# Which config keys each step edits (by prefix).
STEP_PREFIXES: dict[str, tuple[str, ...]] = {
    "model": ("model.",),
    "data": ("data.",),
    "prompt": ("prompt.",),
    "training": ("train.", "eval."),
    "generation": ("generation.",),
}


class StepScreen(Screen):
    STEP: ClassVar[str] = ""
    HELP: ClassVar[str] = ""
    NEXT_LABEL: ClassVar[str] = "Next →"
    BINDINGS = [
        Binding("escape", "app.back", "Back"),
        Binding("ctrl+n", "app.next", "Next"),
        Binding("ctrl+s", "app.save", "Save"),
        Binding("f1", "app.help", "Help"),
        Binding("question_mark", "app.help", "Help", show=False),
    ]

    @property
    def wizard(self) -> WizardApp:
        return self.app  # type: ignore[return-value]

    @property
    def state(self) -> WizardState:
        return self.wizard.state

    def compose(self) -> ComposeResult:
        yield Static(self.title_text(), id="title", markup=False)
        yield StepIndicator(STEPS, self.STEP)
        with VerticalScroll(id="body"):
            yield from self.compose_body()
        with Horizontal(id="nav"):
            yield Button("← Back", id="back", compact=True)
            yield Static("", id="nav-status", markup=False)
            yield Button(self.NEXT_LABEL, id="next", variant="primary", compact=True)
        yield Footer()

    def compose_body(self) -> Iterable[Widget]:
        return ()

    def title_text(self) -> str:
        state = self.state
        mark = " ● unsaved" if state.dirty else ""
        origin = " (defaults: the file was not used)" if state.from_defaults else ""
        return f"Headline Studio wizard — {display_path(state.path)}{origin}{mark}"

    @property
    def keys(self) -> list[str]:
        prefixes = STEP_PREFIXES.get(self.STEP, ())
        return [k for k in self.state.entries if k.startswith(prefixes)] if prefixes else []

    def invalid_here(self) -> list[str]:
        return [k for k in self.keys if self.state.error(k)]

    def refresh_from_state(self) -> None:
        """Errors, title and status from the state (after any edit or save)."""
        if not self.is_mounted:
            return
        self.query_one("#title", Static).update(self.title_text())
        invalid_steps = {
            step for step, prefixes in STEP_PREFIXES.items() if self.state.invalid_keys() and any(
                k.startswith(prefixes) for k in self.state.invalid_keys())
        }
        if self.state.general_errors:
            invalid_steps.add("review")
        self.query_one(StepIndicator).mark_invalid(invalid_steps)
        for row in self.query(FieldRow):
            row.show_error(self.state.error(row.spec.key))
        bad = self.invalid_here()
        status = f"{len(bad)} invalid field{'s' if len(bad) != 1 else ''}: fix before Next" if bad else ""
        self.query_one("#nav-status", Static).update(status)

    def sync_texts(self) -> None:
        for row in self.query(FieldRow):
            row.set_text(self.state.text(row.spec.key))

    def on_screen_resume(self) -> None:
        self.sync_texts()
        self.refresh_from_state()

    def focus_first_invalid(self) -> None:
        bad = self.invalid_here()
        if bad:
            editor = self.query(f"#{field_id(bad[0])}")
            if editor:
                editor.first().focus()

    @on(Button.Pressed, "#back")
    def _back(self) -> None:
        self.wizard.action_back()

    @on(Button.Pressed, "#next")
    def _next(self) -> None:
        self.wizard.action_next()


class FieldsScreen(StepScreen):
    """A step made of grouped FieldRows."""

    GROUPS: ClassVar[list[tuple[str, list[str]]]] = []

    def field_row(self, key: str) -> FieldRow:
        state = self.state
        return FieldRow(state.spec(key), state.text(key), state.help(key), state.error(key))

    def compose_groups(self, groups: list[tuple[str, list[str]]]) -> Iterable[Widget]:
        for title, keys in groups:
            yield Static(title, classes="group-title", markup=False)
            for key in keys:
                yield self.field_row(key)

    def compose_body(self) -> Iterable[Widget]:
        yield from self.compose_groups(self.GROUPS)

    @on(FieldEdited)
    def _field_edited(self, event: FieldEdited) -> None:
        event.stop()
        self.state.set_text(event.key, event.text)
        self.field_changed(event.key)
        self.refresh_from_state()

    def field_changed(self, key: str) -> None:
        """Hook for screens that react to a value (LoRA fields, previews, estimates)."""
