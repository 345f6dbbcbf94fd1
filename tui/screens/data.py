"""Step 2: where the articles come from, column mapping, splits, preview and cleaning report."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual import on
from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import Button, DataTable, Static

from tui.messages import DataLoaded
from tui.screens.base import FieldsScreen

PREVIEW_CELL_CHARS = 60


def report_text(report: dict[str, Any]) -> str:
    """The cleaning report (DataReport.to_dict()) as a few readable lines."""
    dropped = report.get("dropped") or {}
    lines = [
        f"rows read {report.get('rows_read', '?')} · kept {report.get('rows_kept', '?')} · "
        f"dropped {sum(dropped.values()) if dropped else 0}"
    ]
    for title, counts in (("dropped", dropped), ("repaired", report.get("repaired") or {}),
                          ("categories", report.get("categories") or {}),
                          ("splits", report.get("splits") or {})):
        if counts:
            lines.append(f"{title}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for example in (report.get("dropped_examples") or [])[:3]:
        lines.append(f"  e.g. {example.get('where', '')} {example.get('reason', '')}: "
                     f"{example.get('title', '')!r}")
    return "\n".join(lines)


class DataScreen(FieldsScreen):
    STEP = "data"
    HELP = (
        "Data: data.source is a .jsonl/.csv/.parquet file, a folder (one article per file) or\n"
        "a Hugging Face dataset id. The preview shows the first rows as the trainer's own\n"
        "loader maps them with the columns below (unsaved edits included). The cleaning\n"
        "report reads everything, so it runs in the background on demand (r)."
    )
    BINDINGS = [("r", "report", "Cleaning report"), ("p", "preview", "Preview")]
    GROUPS = [
        ("Source", ["data.source", "data.format", "data.hf_split", "data.encoding_errors"]),
        ("Columns", ["data.columns.title", "data.columns.text", "data.columns.category"]),
        ("Cleaning", ["data.min_title_words", "data.max_title_words", "data.min_text_chars",
                      "data.max_text_chars", "data.max_examples"]),
        ("Split", ["data.split.validation", "data.split.test", "data.seed"]),
    ]

    def compose_body(self) -> Iterable[Widget]:
        yield from super().compose_body()
        yield Static("Preview", classes="group-title")
        with Horizontal(classes="buttons"):
            yield Button("Reload preview (p)", id="preview", compact=True)
            yield Button("Cleaning report (r)", id="report", compact=True)
        yield Static("", id="preview-status", markup=False)
        yield DataTable(id="preview-table", show_cursor=False, zebra_stripes=True)
        yield Static("Cleaning report: not computed yet (r).", id="report-text", markup=False)

    def on_mount(self) -> None:
        self._loaded_once = False
        if self.wizard.data_preview is not None:
            self._show_preview(self.wizard.data_preview)
        if self.wizard.data_report is not None:
            self._show_report(self.wizard.data_report)

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if self.wizard.data_report is not None:  # counted from the Training screen
            self._show_report(self.wizard.data_report)
        if not self._loaded_once:
            self._loaded_once = True
            self.action_preview()

    def _data_fields_valid(self) -> bool:
        return not self.state.invalid_keys("data.")

    @on(Button.Pressed, "#preview")
    def action_preview(self) -> None:
        if not self._data_fields_valid():
            self.query_one("#preview-status", Static).update("Fix the data fields to preview.")
            return
        self.query_one("#preview-status", Static).update("Reading the first rows…")
        self.wizard.run_data("preview", self)

    @on(Button.Pressed, "#report")
    def action_report(self) -> None:
        if not self._data_fields_valid():
            self.query_one("#report-text", Static).update("Fix the data fields first.")
            return
        self.query_one("#report-text", Static).update("Cleaning report: reading and cleaning every row…")
        self.wizard.run_data("report", self)

    @on(DataLoaded)
    def _loaded(self, event: DataLoaded) -> None:
        if event.kind == "preview":
            if event.error:
                self.query_one("#preview-status", Static).update(f"Preview failed: {event.error}")
                return
            self._show_preview(event.data)
        else:
            if event.error:
                self.query_one("#report-text", Static).update(f"Cleaning report failed: {event.error}")
                return
            self._show_report(event.data)

    def _show_preview(self, data: dict[str, Any]) -> None:
        rows = data.get("rows") or []
        table = self.query_one("#preview-table", DataTable)
        table.clear(columns=True)
        names: list[str] = []
        for row in rows:
            names += [k for k in row if k not in names]
        for name in names:
            table.add_column(name, key=name)
        for row in rows:
            cells = []
            for name in names:
                value = row.get(name)
                text = "null" if value is None else str(value).replace("\n", " ")
                if len(text) > PREVIEW_CELL_CHARS:
                    text = text[: PREVIEW_CELL_CHARS - 1] + "…"
                cells.append(text)
            table.add_row(*cells)
        columns = ", ".join(data.get("columns") or [])
        self.query_one("#preview-status", Static).update(
            f"First {len(rows)} rows as mapped · source columns: {columns or '?'}"
        )

    def _show_report(self, report: dict[str, Any]) -> None:
        self.query_one("#report-text", Static).update("Cleaning report: " + report_text(report))
