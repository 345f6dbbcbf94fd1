"""One config key on screen: name, editor, then the valid range and the YAML comment, error."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Input, Label, Select, Static

from tui.fields import FieldSpec
from tui.messages import FieldEdited


def field_id(key: str) -> str:
    """A DOM id for a dotted key: train.batch_size -> train__batch_size."""
    return key.replace(".", "__")


class FieldRow(Vertical):
    """Attributes down (text, error), FieldEdited up."""

    def __init__(self, spec: FieldSpec, text: str, help_text: str, error: str | None = None):
        super().__init__(id=f"row-{field_id(spec.key)}", classes="field-row")
        self.spec = spec
        self._text = text
        self._help = help_text
        self._error = error

    def compose(self) -> ComposeResult:
        with Horizontal(classes="field-line"):
            yield Label(self.spec.name, classes="field-label")
            if self.spec.choices and self.spec.kind in ("choice", "bool"):
                options = [(c, c) for c in self.spec.choices]
                value = self._text if self._text in self.spec.choices else Select.NULL
                yield Select(options, value=value, allow_blank=value is Select.NULL,
                             compact=True, id=field_id(self.spec.key), classes="field-editor")
            else:
                yield Input(self._text, compact=True, id=field_id(self.spec.key),
                            classes="field-editor", select_on_focus=False)
        help_line = Content.assemble(
            (self.spec.range_text, "$text-accent"),
            "  " if self.spec.range_text and self._help else "",
            self._help,
        )
        if help_line.plain:
            yield Static(help_line, classes="field-help")
        yield Static(self._error or "", classes="field-error", markup=False)

    def on_mount(self) -> None:
        self.show_error(self._error)

    @property
    def editor(self) -> Input | Select:
        return self.query_one(".field-editor")  # type: ignore[return-value]

    def show_error(self, message: str | None) -> None:
        self._error = message
        self.set_class(bool(message), "-invalid")
        if self.is_mounted:
            self.query_one(".field-error", Static).update(message or "")

    def set_text(self, text: str) -> None:
        editor = self.editor
        if isinstance(editor, Input):
            if editor.value != text:
                editor.value = text
        elif text in self.spec.choices and editor.value != text:
            editor.value = text

    @on(Input.Changed, ".field-editor")
    def _input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(FieldEdited(self.spec.key, event.value))

    @on(Select.Changed, ".field-editor")
    def _select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is not Select.NULL:
            self.post_message(FieldEdited(self.spec.key, str(event.value)))

    @on(Input.Submitted, ".field-editor")
    def _submitted(self, event: Input.Submitted) -> None:
        # Enter keeps the value shown (prefilled or typed) and moves on.
        event.stop()
        self.screen.focus_next()
