"""Step 6: the diff of config.yml, the schema's errors, the exact command; Save or Save & train."""

from __future__ import annotations

from collections.abc import Iterable

from textual import on
from textual.containers import Horizontal
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Button, Static

from tui.screens.base import StepScreen
from tui.state import shown_command


def diff_content(diff: str) -> Content:
    if not diff:
        return Content.styled("No changes: saving leaves the file byte for byte as it is.", "italic")
    parts: list[tuple[str, str] | str] = []
    for line in diff.splitlines(keepends=True):
        if line.startswith(("+++", "---")):
            parts.append((line, "bold"))
        elif line.startswith("@@"):
            parts.append((line, "$text-accent"))
        elif line.startswith("+"):
            parts.append((line, "$text-success"))
        elif line.startswith("-"):
            parts.append((line, "$text-error"))
        else:
            parts.append((line, "$text-muted"))
    return Content.assemble(*parts).rstrip()


class ReviewScreen(StepScreen):
    STEP = "review"
    NEXT_LABEL = "Save & train →"
    HELP = (
        "Review: the changes Save will write to config.yml (only the values you changed;\n"
        "comments, blank lines, key order and quoting are kept), the errors found by the\n"
        "schema, including rules across fields, and the command Save & train runs."
    )

    def compose_body(self) -> Iterable[Widget]:
        yield Static("Errors", classes="group-title", id="errors-title")
        yield Static("", id="errors", markup=False)
        yield Static("Command (Save & train)", classes="group-title")
        yield Static("", id="command", markup=False)
        with Horizontal(classes="buttons"):
            yield Button("Save (Ctrl+S)", id="save", variant="success", compact=True)
            yield Button("Save & train", id="save-train", variant="primary", compact=True)
        yield Static("Changes to config.yml", classes="group-title")
        yield Static("", id="diff")

    def refresh_from_state(self) -> None:
        super().refresh_from_state()
        if not self.is_mounted:
            return
        state = self.state
        errors = [f"{key}: {state.errors[key]}" for key in state.invalid_keys()]
        errors += state.general_errors
        self.query_one("#errors", Static).update("\n".join(errors) if errors else "None: the config is valid.")
        self.query_one("#errors").set_class(bool(errors), "-invalid")
        self.query_one("#diff", Static).update(diff_content(state.diff()))
        argv = state.train_command(self.wizard.trainer_cmd, state.progress_file())
        self.query_one("#command", Static).update(shown_command(argv))

    @on(Button.Pressed, "#save")
    def _save(self) -> None:
        self.wizard.action_save()

    @on(Button.Pressed, "#save-train")
    def _save_train(self) -> None:
        self.wizard.action_next()
