"""Modal dialogs: a question with buttons, the broken-config notice, help."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ChoiceDialog(ModalScreen[str]):
    """A question with buttons; dismisses with the chosen button's id (Esc = "cancel")."""

    BINDINGS = [Binding("escape", "choose('cancel')", "Cancel")]

    def __init__(self, title: str, message: str, choices: list[tuple[str, str]], id: str | None = None):
        super().__init__(id=id, classes="dialog-screen")
        self._title = title
        self._message = message
        self._choices = choices

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self._title, classes="dialog-title", markup=False)
            with VerticalScroll(classes="dialog-body"):
                yield Static(self._message, classes="dialog-message", markup=False)
            with Horizontal(classes="dialog-buttons"):
                for number, (choice, label) in enumerate(self._choices):
                    yield Button(label, id=choice, variant="primary" if number == 0 else "default",
                                 compact=True)

    def on_mount(self) -> None:
        self.query(Button).first().focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id or "cancel")

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)


def broken_config_dialog(path: str, message: str) -> ChoiceDialog:
    return ChoiceDialog(
        "config.yml cannot be used",
        f"{path}\n\n{message}\n\nStart from the defaults? The file is not changed unless you "
        "save (Ctrl+S), which replaces it.",
        [("defaults", "Start from defaults"), ("quit", "Quit")],
        id="broken-config",
    )


def unsaved_dialog() -> ChoiceDialog:
    return ChoiceDialog(
        "Unsaved changes",
        "config.yml has changes that are not saved.",
        [("save", "Save and quit"), ("discard", "Quit without saving"), ("cancel", "Cancel")],
        id="unsaved",
    )


KEYS_HELP = """\
Tab / Shift+Tab   next / previous field
Enter             keep the value shown and move on (on a button: press it)
Esc               previous step          Ctrl+N   next step
Ctrl+S            save config.yml        F1 or ?  this help
Ctrl+Q            quit (asks when there are unsaved changes)
A click on a step name on top goes there (forward only while this step is valid).
Values are checked by the trainer's own schema as you type; an invalid field is
marked with the schema's message and blocks Next and Save.
Nothing is written until you save."""


class HelpDialog(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,f1,q,question_mark", "dismiss", "Close"),
    ]

    def __init__(self, screen_help: str):
        super().__init__(id="help", classes="dialog-screen")
        self._screen_help = screen_help

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("Help", classes="dialog-title")
            with VerticalScroll(classes="dialog-body"):
                if self._screen_help:
                    yield Static(self._screen_help, classes="dialog-message", markup=False)
                yield Static(KEYS_HELP, classes="dialog-message", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close", id="close", variant="primary", compact=True)

    @on(Button.Pressed, "#close")
    def _close(self) -> None:
        self.dismiss(None)

    async def action_dismiss(self, result: None = None) -> None:  # type: ignore[override]
        self.dismiss(None)
