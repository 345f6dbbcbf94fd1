"""Step 7: run `train` as a subprocess and follow its progress JSON live.

Progress bar with the trainer's ETA, train/validation loss, throughput, the log tail;
Cancel sends SIGINT (the trainer saves a checkpoint and reports "cancelled"), then
SIGTERM and SIGKILL after grace periods; Resume continues from the run folder. At the
end: the eval table (base vs fine-tuned), sample headlines and where the run is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual import on, work
from textual.containers import Horizontal
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Button, DataTable, Log, ProgressBar, Static

from tui.estimate import duration
from tui.messages import TrainerEvent, TrainerExited, TrainerOutput
from tui.runner import TrainerRun
from tui.screens.base import StepScreen
from tui.state import display_path, shown_command

GRACE_TERM_S = 60.0  # after SIGINT: time to save the checkpoint before SIGTERM
GRACE_KILL_S = 10.0  # after SIGTERM: before SIGKILL
MODEL_COLUMNS = ("base", "fine_tuned", "finetuned", "tuned")


def eval_table(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Numeric leaves of eval.json's "models" as rows; 'base' / 'fine_tuned' become columns.

    eval.json holds {"models": {"base": {"val_loss", "overall": {"rougeL", ...}, ...},
    "fine_tuned": {...}}, ...}; without "models" the whole object is tabulated.
    """
    source = metrics.get("models") if isinstance(metrics.get("models"), dict) else metrics
    leaves: list[tuple[list[str], float]] = []

    def walk(node: Any, path: list[str]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, [*path, str(key)])
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            leaves.append((path, float(node)))

    walk(source, [])
    columns: list[str] = []
    rows: dict[str, dict[str, float]] = {}
    for path, value in leaves:
        model = next((p for p in path if p in MODEL_COLUMNS), "value")
        name = ".".join(p for p in path if p != model) or model
        if model not in columns:
            columns.append(model)
        rows.setdefault(name, {})[model] = value
    body = [[name, *(_fmt(values.get(c)) for c in columns)] for name, values in rows.items()]
    return ["metric", *columns], body


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}" if value.is_integer() and abs(value) >= 10 else f"{value:.4f}"


class TrainScreen(StepScreen):
    STEP = "train"
    NEXT_LABEL = "Start"
    HELP = (
        "Train: runs the trainer as a separate process and follows its progress file.\n"
        "Cancel (c) asks it to stop: it saves a checkpoint first, then Resume continues\n"
        "from there. The log tail shows the trainer's own output."
    )
    BINDINGS = [("c", "cancel_run", "Cancel run")]

    def __init__(self) -> None:
        super().__init__()
        self.trainer_run: TrainerRun | None = None
        self.run_dir: str | None = None
        self.checkpoint: str | None = None
        self.outcome: str | None = None  # finished | cancelled | failed
        self._stop_timers: list[Timer] = []

    def compose_body(self) -> Iterable[Widget]:
        yield Static("", id="run-command", markup=False)
        yield Static("Not started.", id="run-status", markup=False)
        yield ProgressBar(total=None, show_eta=False, id="progress")
        yield Static("", id="run-stats", markup=False)
        from tui.widgets.loss_chart import LossChart

        yield LossChart()
        with Horizontal(classes="buttons"):
            yield Button("Cancel (c)", id="cancel", variant="error", compact=True, disabled=True)
            yield Button("Resume", id="resume", variant="primary", compact=True)
        yield Static("Log", classes="group-title")
        yield Log(id="log-tail", max_lines=200)
        yield Static("Evaluation", classes="group-title", id="eval-title")
        yield DataTable(id="eval-table", show_cursor=False)
        yield Static("", id="samples", markup=False)
        yield Static("", id="run-dir", markup=False)

    def on_mount(self) -> None:
        self.query_one("#resume").display = False
        self._set_results_visible(False)

    def _set_results_visible(self, visible: bool) -> None:
        for selector in ("#eval-title", "#eval-table", "#samples"):
            self.query_one(selector).display = visible

    def refresh_from_state(self) -> None:
        super().refresh_from_state()
        if not self.is_mounted:
            return
        if self.trainer_run is None:
            argv = self.state.train_command(self.wizard.trainer_cmd, self.state.progress_file())
            self.query_one("#run-command", Static).update("$ " + shown_command(argv))
        self.query_one("#next", Button).disabled = self.running

    @property
    def running(self) -> bool:
        return self.trainer_run is not None and self.trainer_run.running

    # -- starting ---------------------------------------------------------------------
    def start(self, resume: str | None = None) -> None:
        if self.running:
            return
        state = self.state
        progress_file = state.progress_file()
        argv = state.train_command(self.wizard.trainer_cmd, progress_file, resume=resume)
        self.query_one("#run-command", Static).update("$ " + shown_command(argv))
        self._reset_view(resumed=resume is not None)
        self.trainer_run = TrainerRun(argv, progress_file)
        try:
            self.trainer_run.start()
        except OSError as exc:
            self.query_one("#run-status", Static).update(f"Cannot start the trainer: {exc}")
            self.trainer_run = None
            return
        self.query_one("#run-status", Static).update("Starting…")
        self.query_one("#cancel", Button).disabled = False
        self.query_one("#resume").display = False
        self.refresh_from_state()
        self._pump_events(self.trainer_run)
        self._pump_output(self.trainer_run)

    def _reset_view(self, resumed: bool) -> None:
        self.outcome = None
        self.checkpoint = None
        for timer in self._stop_timers:
            timer.stop()
        self._stop_timers = []
        self._set_results_visible(False)
        self.query_one("#eval-table", DataTable).clear(columns=True)
        self.query_one("#samples", Static).update("")
        self.query_one("#run-dir", Static).update("")
        self.query_one("#log-tail", Log).write_line("— resumed —" if resumed else "— started —")

    @work(thread=True, group="trainer-events")
    def _pump_events(self, run: TrainerRun) -> None:
        from textual.worker import get_current_worker

        worker = get_current_worker()
        for event in run.events(lambda: worker.is_cancelled):
            self.post_message(TrainerEvent(event))
        self.post_message(TrainerExited(run.wait()))

    @work(thread=True, group="trainer-output")
    def _pump_output(self, run: TrainerRun) -> None:
        for line in run.output_lines():
            self.post_message(TrainerOutput(line))

    # -- following --------------------------------------------------------------------
    @on(TrainerOutput)
    def _output(self, message: TrainerOutput) -> None:
        self.query_one("#log-tail", Log).write_line(message.line)

    @on(TrainerEvent)
    def _event(self, message: TrainerEvent) -> None:
        event = message.event
        kind = event.get("event")
        handler = getattr(self, f"_handle_{kind}", None)
        if handler is not None:
            handler(event)

    def _status(self, text: str) -> None:
        self.query_one("#run-status", Static).update(text)

    def _handle_start(self, event: dict) -> None:
        self.run_dir = event.get("run_dir") or self.run_dir
        total = event.get("total_steps")
        self.query_one("#progress", ProgressBar).update(total=total, progress=0)
        examples = event.get("examples") or {}
        self._status(
            f"Running · {total} steps · {event.get('epochs')} epochs · "
            f"{examples.get('train', '?')} train / {examples.get('validation', '?')} validation examples"
        )

    def _handle_step(self, event: dict) -> None:
        step, total = event.get("step", 0), event.get("total_steps")
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=total or bar.total, progress=step)
        loss = event.get("loss")
        if loss is not None:
            self.query_one("LossChart").add_train(loss)  # type: ignore[attr-defined]
        self.query_one("#run-stats", Static).update(
            f"step {step}/{total} · epoch {event.get('epoch', 0):.2f} · loss {loss:.4f} · "
            f"lr {event.get('learning_rate', 0):.2e} · {event.get('tokens_per_s', 0):,.0f} tokens/s · "
            f"elapsed {duration(event.get('elapsed_s', 0))} · ETA {duration(event.get('eta_s', 0))}"
        )

    def _handle_eval(self, event: dict) -> None:
        if event.get("val_loss") is not None:
            self.query_one("LossChart").add_val(event["val_loss"])  # type: ignore[attr-defined]
        self._log_line(f"eval at step {event.get('step')}: val_loss {event.get('val_loss'):.4f}, "
                  f"perplexity {event.get('val_perplexity', 0):.2f}")

    def _handle_checkpoint(self, event: dict) -> None:
        self.checkpoint = event.get("path")
        self._log_line(f"checkpoint at step {event.get('step')}: {event.get('path')}")

    def _handle_log(self, event: dict) -> None:
        self._log_line(f"[{event.get('level', 'info')}] {event.get('message', '')}")

    def _handle_eval_result(self, event: dict) -> None:
        columns, rows = eval_table(event.get("metrics") or {})
        table = self.query_one("#eval-table", DataTable)
        table.clear(columns=True)
        table.add_columns(*columns)
        table.add_rows(rows)
        self._set_results_visible(True)

    def _handle_samples(self, event: dict) -> None:
        lines = []
        for sample in event.get("samples") or []:
            category = f" [{sample['category']}]" if sample.get("category") else ""
            lines.append(f"{sample.get('theme', '')}{category}\n"
                         f"  base:       {sample.get('base', '')}\n"
                         f"  fine-tuned: {sample.get('fine_tuned', '')}")
        self.query_one("#samples", Static).update("Samples\n" + "\n".join(lines))
        self._set_results_visible(True)

    def _handle_done(self, event: dict) -> None:
        self.outcome = "finished"
        self.run_dir = event.get("run_dir") or self.run_dir
        bar = self.query_one("#progress", ProgressBar)
        if bar.total:
            bar.update(progress=bar.total)
        self._status("Finished.")
        self._show_run_dir()

    def _handle_cancelled(self, event: dict) -> None:
        self.outcome = "cancelled"
        self.run_dir = event.get("run_dir") or self.run_dir
        self.checkpoint = event.get("checkpoint") or self.checkpoint
        where = f" Checkpoint: {self.checkpoint}." if self.checkpoint else ""
        self._status(f"Cancelled.{where} Resume continues from it.")
        self._show_run_dir()

    def _handle_error(self, event: dict) -> None:
        self.outcome = "failed"
        self._status(f"Failed: {event.get('message', '')}")

    def _show_run_dir(self) -> None:
        if self.run_dir:
            self.query_one("#run-dir", Static).update(f"Run folder: {display_path(self.run_dir)}")

    def _log_line(self, text: str) -> None:
        self.query_one("#log-tail", Log).write_line(text)

    @on(TrainerExited)
    def _exited(self, message: TrainerExited) -> None:
        for timer in self._stop_timers:
            timer.stop()
        self._stop_timers = []
        code = message.returncode
        if self.outcome is None:
            cancelled = self.trainer_run is not None and self.trainer_run.cancel_requested
            self.outcome = "cancelled" if cancelled else ("finished" if code == 0 else "failed")
            if self.outcome == "failed":
                self._status(f"Failed: the trainer exited with code {code} (see the log).")
            elif self.outcome == "cancelled":
                self._status("Cancelled (the trainer reported no checkpoint).")
        self.query_one("#cancel", Button).disabled = True
        self.query_one("#cancel", Button).label = "Cancel (c)"
        self.query_one("#resume").display = self.outcome in ("cancelled", "failed") and bool(self.run_dir)
        self.refresh_from_state()

    # -- stopping ---------------------------------------------------------------------
    @on(Button.Pressed, "#cancel")
    def action_cancel_run(self) -> None:
        if not self.running or self.trainer_run is None:
            return
        self.trainer_run.interrupt()
        button = self.query_one("#cancel", Button)
        button.label = "Cancelling…"
        button.disabled = True
        self._status("Cancelling: the trainer is saving a checkpoint…")
        run = self.trainer_run
        self._stop_timers.append(self.set_timer(GRACE_TERM_S, run.terminate))
        self._stop_timers.append(self.set_timer(GRACE_TERM_S + GRACE_KILL_S, run.kill))

    @on(Button.Pressed, "#resume")
    def _resume(self) -> None:
        if self.run_dir:
            self.start(resume=self.run_dir)

    def stop_for_exit(self) -> None:
        """The wizard is quitting: ask the trainer to stop (it saves a checkpoint)."""
        if self.running and self.trainer_run is not None:
            self.trainer_run.interrupt()
