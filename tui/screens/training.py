"""Step 4: every train.* and eval.* key, grouped, with steps and time per epoch estimated."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual import on
from textual.widget import Widget
from textual.widgets import Button, Static

from tui.estimate import CPU_TOKENS_PER_S, GPU_TOKENS_PER_S, duration, estimate
from tui.screens.base import FieldsScreen

ESTIMATE_KEYS = (
    "data.split.validation", "data.split.test", "prompt.tasks", "prompt.article_max_tokens",
    "train.batch_size", "train.grad_accum", "train.max_seq_len", "train.epochs", "train.max_steps",
)


class TrainingScreen(FieldsScreen):
    STEP = "training"
    HELP = (
        "Training: each field shows its comment from config.yml and its valid range.\n"
        "The estimate: steps/epoch = articles × (1 − validation − test) × tasks ÷\n"
        "(batch_size × grad_accum); time/epoch = tokens ÷ an assumed throughput of\n"
        f"~{CPU_TOKENS_PER_S:,.0f} tokens/s on a CPU and ~{GPU_TOKENS_PER_S:,.0f} on one GPU\n"
        "(full fine-tuning of a ~135M model). Run the cleaning report (button) for the\n"
        "article count; the Train screen shows the measured throughput."
    )
    GROUPS = [
        ("Run", ["train.output_dir", "train.run_name", "train.seed"]),
        ("Length", ["train.epochs", "train.max_steps"]),
        ("Batches", ["train.batch_size", "train.grad_accum", "train.max_seq_len",
                     "train.group_by_length"]),
        ("Optimizer", ["train.learning_rate", "train.weight_decay", "train.warmup_steps",
                       "train.scheduler", "train.max_grad_norm"]),
        ("Evaluation, checkpoints, early stopping", [
            "train.eval_steps", "train.save_steps", "train.logging_steps",
            "train.early_stopping_patience", "train.save_total_limit"]),
        ("Hardware", ["train.precision", "train.num_threads"]),
        ("Final evaluation (eval.*)", ["eval.max_examples", "eval.batch_size", "eval.compare_base",
                                       "eval.examples_shown", "eval.runaway_words"]),
    ]

    def compose_body(self) -> Iterable[Widget]:
        yield Static("Estimate", classes="group-title")
        yield Static("", id="estimate", markup=False)
        yield Button("Count articles (cleaning report)", id="count", compact=True)
        yield from super().compose_body()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.update_estimate()

    def field_changed(self, key: str) -> None:
        if key in ESTIMATE_KEYS:
            self.update_estimate()

    @on(Button.Pressed, "#count")
    def _count(self) -> None:
        self.query_one("#estimate", Static).update("Counting articles (cleaning report)…")
        self.wizard.run_data("report", self)

    def on_data_loaded(self, event: Any) -> None:
        if event.error:
            self.query_one("#estimate", Static).update(f"Cleaning report failed: {event.error}")
        else:
            self.update_estimate()

    def update_estimate(self) -> None:
        self.query_one("#estimate", Static).update(self.estimate_text())

    def estimate_text(self) -> str:
        report = self.wizard.data_report
        if report is None:
            return ("Article count unknown: press the button (or Cleaning report on the Data "
                    "screen) for steps and time per epoch.")
        values = {key: self.state.value(key) for key in ESTIMATE_KEYS}
        train = (report.get("splits") or {}).get("train")
        est = estimate(int(report.get("rows_kept") or 0), values,
                       train_articles=int(train) if train is not None else None)
        if est is None:
            return "Fix the invalid fields for an estimate."
        return (
            f"{est.articles:,} articles → {est.train_articles:,} for training × "
            f"{len(values['prompt.tasks'])} task(s) = {est.examples_per_epoch:,} examples/epoch\n"
            f"{est.steps_per_epoch:,} steps/epoch · {est.total_steps:,} steps in all · "
            f"~{est.tokens_per_epoch:,} tokens/epoch\n"
            f"time/epoch ≈ {duration(est.cpu_seconds_per_epoch)} on a CPU "
            f"(~{CPU_TOKENS_PER_S:,.0f} tok/s), ≈ {duration(est.gpu_seconds_per_epoch)} on one GPU "
            f"(~{GPU_TOKENS_PER_S:,.0f} tok/s) — assumed throughput, see F1"
        )
