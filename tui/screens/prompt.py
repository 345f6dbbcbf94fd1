"""Step 3: prompt templates, with a live preview of one real formatted example."""

from __future__ import annotations

from collections.abc import Iterable

from textual.content import Content
from textual.widget import Widget
from textual.widgets import Static

from tui.prompt_preview import Example, TemplateError, examples
from tui.screens.base import FieldsScreen

PREVIEW_CHARS = 220
TRAINED_STYLE = "bold $text-success on $success-muted"
PROMPT_STYLE = "$text-muted"


def render_example(example: Example) -> Content:
    prompt = example.prompt
    if len(prompt) > PREVIEW_CHARS:
        # Show the start and the end (the end is where the headline follows).
        prompt = prompt[: PREVIEW_CHARS // 2] + " … " + prompt[-PREVIEW_CHARS // 2 :]
    label = "theme → headline" if example.task == "theme" else "article → headline"
    return Content.assemble(
        (f"{label}  ({example.template_key.split('.')[-1]})\n", "bold"),
        (prompt, PROMPT_STYLE),
        (example.target, TRAINED_STYLE),
    )


class PromptScreen(FieldsScreen):
    STEP = "prompt"
    HELP = (
        "Prompt: every article gives one example per task. The templates are Python format\n"
        "strings ({theme}, {article}, {category}); write \\n for a new line. The model is\n"
        "trained only on what follows the prompt — a space, the headline and EOS —\n"
        "highlighted in the preview. The preview uses the first row of the data preview;\n"
        "its theme is approximated from the title (the trainer uses TF-IDF keywords)."
    )
    GROUPS = [
        ("Tasks", ["prompt.tasks", "prompt.category_rate", "prompt.theme_keywords",
                   "prompt.article_max_tokens"]),
        ("Templates", ["prompt.theme_template", "prompt.theme_category_template",
                       "prompt.article_template", "prompt.article_category_template"]),
    ]

    def compose_body(self) -> Iterable[Widget]:
        yield Static("Preview (highlighted: the trained part)", classes="group-title")
        yield Static("", id="prompt-preview")
        yield from super().compose_body()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.update_preview()

    def field_changed(self, key: str) -> None:
        self.update_preview()

    def update_preview(self) -> None:
        values = {key: self.state.value(key) for key in self.keys}
        preview = self.wizard.data_preview
        rows = (preview or {}).get("rows") or []
        row = rows[0] if rows else None
        source = "first preview row" if row else "built-in example row (no data preview loaded)"
        try:
            parts = [render_example(ex) for ex in examples(values, row)]
        except TemplateError as exc:
            content = Content.styled(f"Cannot format {exc}", "$text-error")
        else:
            content = Content("\n\n").join(parts) if parts else Content("(no tasks)")
            content = Content.assemble(content, (f"\n\nfrom the {source}", "italic $text-muted"))
        self.query_one("#prompt-preview", Static).update(content)
