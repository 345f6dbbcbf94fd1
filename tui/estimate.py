"""Steps and time per epoch, estimated from the dataset size before anything runs.

    train rows      = articles × (1 - validation - test)     (the report's split when known)
    examples/epoch  = train rows × len(prompt.tasks)          (each article gives one example per task)
    steps/epoch     = ceil(examples / (batch_size × grad_accum))
    tokens/example  ≈ 32 for a theme prompt + headline; min(article_max_tokens + 32, max_seq_len) for an article
    time/epoch      = tokens/epoch ÷ assumed throughput

The throughput is an assumption, stated on screen: full fine-tuning of a ~135M-parameter
model costs about 6 × 135M ≈ 0.8 GFLOP per token; a laptop CPU sustains roughly
150–250 GFLOP/s in fp32 (≈ 200 tokens/s) and one data-centre GPU in bf16 roughly 100× that.
The Train screen shows the measured tokens/s once a run starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

CPU_TOKENS_PER_S = 200.0
GPU_TOKENS_PER_S = 20_000.0
THEME_EXAMPLE_TOKENS = 32
PROMPT_OVERHEAD_TOKENS = 32


@dataclass(frozen=True)
class Estimate:
    articles: int
    train_articles: int
    examples_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    tokens_per_epoch: int
    cpu_seconds_per_epoch: float
    gpu_seconds_per_epoch: float


def estimate(articles: int, values: dict[str, Any], train_articles: int | None = None) -> Estimate | None:
    """None while a needed value is invalid (the fields show why)."""
    try:
        val, test = float(values["data.split.validation"]), float(values["data.split.test"])
        tasks = list(values["prompt.tasks"])
        batch = int(values["train.batch_size"]) * int(values["train.grad_accum"])
        seq_len = int(values["train.max_seq_len"])
        article_tokens = int(values["prompt.article_max_tokens"])
        epochs = float(values["train.epochs"])
        max_steps = values["train.max_steps"]
        max_steps = None if max_steps is None else int(max_steps)
    except (TypeError, ValueError, KeyError):
        return None
    if batch <= 0 or not tasks:
        return None
    if train_articles is None:
        train_articles = max(0, round(articles * (1.0 - val - test)))
    examples = train_articles * len(tasks)
    steps = math.ceil(examples / batch) if examples else 0
    total = max_steps if max_steps is not None else math.ceil(steps * epochs)
    per_task = {
        "theme": THEME_EXAMPLE_TOKENS,
        "article": min(article_tokens + PROMPT_OVERHEAD_TOKENS, seq_len),
    }
    tokens = train_articles * sum(per_task.get(t, seq_len) for t in tasks)
    return Estimate(
        articles=articles,
        train_articles=train_articles,
        examples_per_epoch=examples,
        steps_per_epoch=steps,
        total_steps=total,
        tokens_per_epoch=tokens,
        cpu_seconds_per_epoch=tokens / CPU_TOKENS_PER_S,
        gpu_seconds_per_epoch=tokens / GPU_TOKENS_PER_S,
    )


def duration(seconds: float) -> str:
    """12 s, 4 min 05 s, 2 h 10 min."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
