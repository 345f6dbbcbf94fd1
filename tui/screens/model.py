"""Step 1: which model, and full fine-tuning or LoRA."""

from __future__ import annotations

from collections.abc import Iterable

from textual import on
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Label, Select, Static

from config import PACKAGED_MODELS
from tui.screens.base import FieldsScreen
from tui.widgets.field import FieldRow

KIND_LABELS = {
    PACKAGED_MODELS[0]: f"{PACKAGED_MODELS[0]} (packaged, default)",
    PACKAGED_MODELS[1]: f"{PACKAGED_MODELS[1]} (packaged, Gemma Terms of Use)",
    "hf": "Hugging Face id",
    "local": "Local model folder",
}


class ModelScreen(FieldsScreen):
    STEP = "model"
    HELP = (
        "Model: the base model to fine-tune. The packaged models are converted once into\n"
        "model.cache_dir. A Hugging Face id (e.g. gpt2) is downloaded at model.revision.\n"
        "A local folder must hold a saved model (config.json, weights, tokenizer).\n"
        "method: full updates every weight; lora trains small adapters, whose fields\n"
        "appear only then (written as a model.lora section, removed with full)."
    )

    def compose_body(self) -> Iterable[Widget]:
        state = self.state
        yield Static("Base model", classes="group-title")
        with Vertical(classes="field-row", id="row-model-kind"):
            with Horizontal(classes="field-line"):
                yield Label("source", classes="field-label")
                yield Select([(label, kind) for kind, label in KIND_LABELS.items()],
                             value=state.model_kind, allow_blank=False, compact=True,
                             id="model-kind", classes="field-editor")
            yield Static("A packaged model, a Hugging Face id, or a local folder (checked).",
                         classes="field-help")
        yield self.field_row("model.name")
        yield self.field_row("model.revision")
        yield self.field_row("model.cache_dir")
        yield Static("Method", classes="group-title")
        yield self.field_row("model.method")
        with Vertical(id="lora-fields"):
            for key in state.keys("model.lora."):
                yield self.field_row(key)
        yield self.field_row("model.trust_remote_code")

    def on_mount(self) -> None:
        self._show_for_state()

    def _show_for_state(self) -> None:
        state = self.state
        self.query_one("#lora-fields").display = state.lora
        self.query_one("#row-model__name", FieldRow).display = state.model_kind in ("hf", "local")
        self.query_one("#row-model__revision", FieldRow).display = state.model_kind == "hf"

    @on(Select.Changed, "#model-kind")
    def _kind_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is Select.NULL or event.value == self.state.model_kind:
            return
        self.state.set_model_kind(str(event.value))
        self.query_one("#row-model__name", FieldRow).set_text(self.state.text("model.name"))
        self._show_for_state()
        self.refresh_from_state()

    def field_changed(self, key: str) -> None:
        if key == "model.method":
            self._show_for_state()
