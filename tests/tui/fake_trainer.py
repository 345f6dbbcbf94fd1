"""A stand-in for `python -m trainer.cli` that speaks the contract of docs/CONTRACTS.md.

Stdlib only. `train` writes the progress JSON events (start, step, eval, checkpoint, log,
eval_result, samples, done) and honours SIGINT like the real trainer: it saves a
"checkpoint", emits "cancelled" and exits 130. `data preview` / `data report` print
fixed JSON. Knobs (environment): FAKE_TRAINER_STEPS (default 4), FAKE_TRAINER_DELAY
seconds per step (default 0), FAKE_TRAINER_FAIL=1 to fail at the first step,
FAKE_TRAINER_QUIET=1 to print nothing (snapshots: output lines race with events).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

RUN_DIR = "runs/20250101-000000-headline"
PREVIEW = {
    "columns": ["title", "text", "category", "date"],
    "rows": [
        {"title": "City council approves new bike lanes downtown",
         "text": "The city council voted on Tuesday to build twelve kilometres of protected bike lanes.",
         "category": "local"},
        {"title": "Storm knocks out power to thousands",
         "text": "A late-season storm brought down power lines across the region overnight.",
         "category": "weather"},
        {"title": "Local team wins regional final",
         "text": "The under-18 side won the regional final on penalties after a goalless draw.",
         "category": None},
    ],
}
REPORT = {
    "source": "data/sample_news.jsonl", "format": "jsonl", "rows_read": 1000, "rows_kept": 960,
    "dropped": {"short_title": 25, "empty_text": 15}, "repaired": {"encoding": 2},
    "dropped_examples": [], "categories": {"local": 500, "weather": 460},
    "splits": {"train": 768, "validation": 96, "test": 96},
}


def say(text: str, stream=None) -> None:
    if not os.environ.get("FAKE_TRAINER_QUIET"):
        print(text, file=stream or sys.stdout, flush=True)


class Progress:
    def __init__(self, path: str):
        self.fh = open(path, "a", encoding="utf-8")

    def emit(self, event: str, **fields) -> None:
        self.fh.write(json.dumps({"event": event, **fields}) + "\n")
        self.fh.flush()


def train(args: argparse.Namespace) -> int:
    steps = int(os.environ.get("FAKE_TRAINER_STEPS", "4"))
    delay = float(os.environ.get("FAKE_TRAINER_DELAY", "0"))
    progress = Progress(args.progress_json)
    cancelled = {"flag": False}
    signal.signal(signal.SIGINT, lambda *_: cancelled.update(flag=True))
    start_step = 2 if args.resume else 0
    say(f"fake trainer: config {os.path.basename(args.config)}, resume={bool(args.resume)}")
    progress.emit("start", run_dir=RUN_DIR, total_steps=steps, epochs=1.0,
                  examples={"train": 768, "validation": 96}, time=0.0)
    for step in range(start_step + 1, steps + 1):
        if cancelled["flag"]:
            checkpoint = f"{RUN_DIR}/checkpoints/checkpoint-{step - 1}"
            progress.emit("checkpoint", step=step - 1, path=checkpoint)
            progress.emit("cancelled", run_dir=RUN_DIR, checkpoint=checkpoint)
            say("fake trainer: cancelled")
            return 130
        if os.environ.get("FAKE_TRAINER_FAIL"):
            progress.emit("error", message="model.name: cannot load 'nope'")
            say("error: cannot load model", sys.stderr)
            return 3
        time.sleep(delay)
        progress.emit("step", step=step, total_steps=steps, epoch=step / steps,
                      loss=3.0 - 0.5 * step, learning_rate=5e-5, tokens_per_s=1234.0,
                      elapsed_s=float(step), eta_s=float(steps - step))
        say(f"step {step}/{steps} loss {3.0 - 0.5 * step:.3f}")
        if step % 2 == 0:
            progress.emit("eval", step=step, val_loss=2.9 - 0.4 * step, val_perplexity=10.0)
            progress.emit("checkpoint", step=step, path=f"{RUN_DIR}/checkpoints/checkpoint-{step}")
    progress.emit("log", level="info", message="training finished, evaluating")
    progress.emit("eval_result", metrics={  # the shape of the trainer's eval.json
        "run": "20250101-000000-headline", "n_prompts": 20, "generation": {"max_new_tokens": 24},
        "models": {
            "base": {"val_loss": 3.2, "overall": {"n": 20, "rouge1": 0.12, "rougeL": 0.10}},
            "fine_tuned": {"val_loss": 1.3, "overall": {"n": 20, "rouge1": 0.31, "rougeL": 0.28}},
        },
        "examples": [],
    })
    progress.emit("samples", samples=[
        {"theme": "bike lanes council", "category": "local",
         "base": "The council is a body", "fine_tuned": "Council approves bike lanes"},
    ])
    progress.emit("done", run_dir=RUN_DIR, status="finished")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fake-trainer")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train")
    p_train.add_argument("--config", required=True)
    p_train.add_argument("--progress-json", required=True)
    p_train.add_argument("--resume", nargs="?", const="latest")
    p_data = sub.add_parser("data")
    p_data.add_argument("what", choices=["preview", "report"])
    p_data.add_argument("--config", required=True)
    p_data.add_argument("--rows", type=int, default=5)
    p_data.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "train":
        return train(args)
    if args.what == "preview":
        print(json.dumps({"columns": PREVIEW["columns"], "rows": PREVIEW["rows"][: args.rows]}))
    else:
        print(json.dumps(REPORT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
