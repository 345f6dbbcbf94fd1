"""Training throughput: our trainer vs a plain Hugging Face Trainer that pads to the maximum.

Both train the same model for exactly one epoch over the same examples with the same
batch size, one after the other in this process, so both see the same real tokens
(attention-mask ones, i.e. no padding); throughput is those tokens per second of
training. (Timing a few steps instead would compare different examples: a group of
short theme prompts against a batch of long article prompts.)

- ours: length-grouped batches (trainer.train.LengthGroupedSampler) padded per batch
  to their own longest example (trainer.train.PadToLongest);
- baseline: the whole dataset padded once to its longest example (tokenizer.pad with
  padding="longest" over all examples, i.e. pad-to-max), random batches, the default
  collator: what a straightforward Trainer script does.

    .venv/bin/python bench/train_throughput.py                 # packaged SmolLM2, BBC data
    .venv/bin/python bench/train_throughput.py --model PATH --steps 5 --batch-size 4

Target on a 2-core CPU: ours >= 1.5x the baseline.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name  # bench/machine.py (bench/ is on sys.path when run as a script)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BBC = REPO.parent / "shared" / "data" / "bbc_news" / "bbc_news.jsonl"
SAMPLE = REPO / "data" / "sample_news.jsonl"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="model.name: packaged name, hub id or model folder (default: packaged SmolLM2)")
    p.add_argument("--data", default=str(BBC if BBC.exists() else SAMPLE), help="articles (JSONL)")
    p.add_argument("--articles", type=int, default=50,
                   help="articles used (80%% go to training, each gives a theme and an article example)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    return p.parse_args(argv)


def machine_info() -> str:
    import torch
    import transformers

    cpu = cpu_name()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (f"{cpu}; {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}; {device}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import Trainer, TrainerCallback, default_data_collator
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    from config import load_config
    from trainer.dataset import build_dataset_dict
    from trainer.modeling import load_model_and_tokenizer
    from trainer.train import HeadlineTrainer, PadToLongest, training_arguments

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(None, [
        f"model.name={args.model}", f"data.source={args.data}", f"data.max_examples={args.articles}",
        f"train.batch_size={args.batch_size}", f"train.max_seq_len={args.max_seq_len}",
        "train.epochs=1", "train.warmup_steps=0", "train.early_stopping_patience=null",
    ])
    print(f"machine: {machine_info()}")
    _, tokenizer = load_model_and_tokenizer(cfg.model.name, cfg.model)
    train_ds = build_dataset_dict(cfg, tokenizer)[0]["train"]
    lengths = list(train_ds["length"])
    longest = max(lengths)
    print(f"data: {args.data}, {len(train_ds)} training examples, length mean {sum(lengths) / len(lengths):.1f} "
          f"/ max {longest} tokens; batch {args.batch_size}, one epoch = "
          f"{-(-len(train_ds) // args.batch_size)} steps per trainer")

    # Baseline data: every example padded to the longest of the whole dataset.
    def pad_to_max(batch):
        out = tokenizer.pad({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                            padding="max_length", max_length=longest)
        out["labels"] = [lab + [-100] * (longest - len(lab)) for lab in batch["labels"]]
        return out

    padded_ds = train_ds.map(pad_to_max, batched=True, batch_size=len(train_ds),
                             remove_columns=["length"])

    class Clock(TrainerCallback):
        """Times the epoch after its first step and counts its real (non-padding) tokens.

        The first step pays one-off costs (optimizer state allocation, first-touch of the
        weights, kernel warm-up) that would otherwise count against whichever trainer runs first.
        """

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                self.t0, self.tok0 = time.perf_counter(), state.num_input_tokens_seen

        def on_train_end(self, args, state, control, **kw):
            self.seconds = time.perf_counter() - self.t0
            self.tokens = state.num_input_tokens_seen - self.tok0

    def run(name: str) -> tuple[float, float]:
        model, _ = load_model_and_tokenizer(cfg.model.name, cfg.model, for_training=True)
        model.config.use_cache = False
        clock = Clock()
        with tempfile.TemporaryDirectory() as tmp:
            targs = training_arguments(cfg, Path(tmp), eval_strategy="no", save_strategy="no",
                                       load_best_model_at_end=False, logging_steps=10_000)
            if name == "ours":
                trainer = HeadlineTrainer(model=model, args=targs, train_dataset=train_ds, callbacks=[clock],
                                          data_collator=PadToLongest(tokenizer.pad_token_id,
                                                                     8 if torch.cuda.is_available() else None),
                                          group_by_length=True, sampler_seed=cfg.train.seed)
            else:
                targs.remove_unused_columns = True
                trainer = Trainer(model=model, args=targs, train_dataset=padded_ds, callbacks=[clock],
                                  data_collator=default_data_collator)
            trainer.remove_callback(PrinterCallback)  # it prints every log dict
            trainer.train()
        seen = len(train_ds) * longest
        rate = clock.tokens / clock.seconds
        pad_note = f", {1 - clock.tokens / seen:.0%} of computed tokens were padding" if name != "ours" else ""
        print(f"{name:>8}: {clock.tokens:,} real tokens in {clock.seconds:.1f} s = {rate:,.0f} tokens/s{pad_note}")
        return rate, clock.seconds

    ours, _ = run("ours")
    base, _ = run("baseline")
    ratio = ours / base
    print(f"\nratio ours / baseline: {ratio:.2f}x (target >= 1.5x)")
    return 0 if ratio >= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
