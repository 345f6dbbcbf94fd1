"""Score a run on its test split, fine-tuned model beside the base model (zero-shot).

For every test article (up to ``eval.max_examples``) both prompts are scored, the
theme prompt and the article prompt, exactly as training built them. Headlines
come from ``trainer.generation`` (the one generation path, also used by the CLI
and the service). Reported per task and overall:

- ROUGE-1/2/L F1 against the real headline (rouge-score, Porter stemming);
- mean headline length in words, rate of empty outputs, rate of runaway outputs
  (more than ``eval.runaway_words`` words, or cut at max_new_tokens without EOS);
- validation perplexity: exp of the mean NLL of the headline tokens (label-masked)
  over the validation split, for both models.

Writes ``eval.json`` and ``eval.md`` into the run folder and returns the eval.json dict.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from config import Config, load_config
from trainer import runs
from trainer.errors import TrainerError

log = logging.getLogger(__name__)

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
TASKS = ("theme", "article")


# -- pure helpers ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer, tokenizers

    # The default tokenizer (lower-cased words, Porter-stemmed), given explicitly: left to pick
    # it, the scorer logs "Using default tokenizer." to stderr on every evaluation.
    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), tokenizer=tokenizers.DefaultTokenizer(use_stemmer=True))


def rouge(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 of predictions against references (stemmed, lower-cased)."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    if not preds:
        return {k: 0.0 for k in ROUGE_KEYS}
    scorer = _scorer()
    sums = dict.fromkeys(ROUGE_KEYS, 0.0)
    for pred, ref in zip(preds, refs):
        scores = scorer.score(ref, pred)  # score(target, prediction)
        for k in ROUGE_KEYS:
            sums[k] += scores[k].fmeasure
    return {k: sums[k] / len(preds) for k in ROUGE_KEYS}


def output_stats(texts: Sequence[str], finished: Sequence[bool], runaway_words: int) -> dict[str, float]:
    """Mean length in words, empty rate, runaway rate (too long, or cut without EOS)."""
    n = len(texts)
    if n == 0:
        return {"mean_words": 0.0, "empty_rate": 0.0, "runaway_rate": 0.0}
    words = [len(t.split()) for t in texts]
    runaway = [w > runaway_words or not f for w, f in zip(words, finished)]
    return {
        "mean_words": sum(words) / n,
        "empty_rate": sum(w == 0 for w in words) / n,
        "runaway_rate": sum(runaway) / n,
    }


def score_outputs(rows: Sequence[dict], outputs: Sequence[tuple[str, bool]], runaway_words: int) -> dict:
    """Metrics overall and per task for one model's outputs (one per row, in order)."""
    groups = {"overall": list(range(len(rows)))}
    for task in TASKS:
        idx = [i for i, r in enumerate(rows) if r["task"] == task]
        if idx:
            groups[task] = idx
    result = {}
    for name, idx in groups.items():
        texts = [outputs[i][0] for i in idx]
        result[name] = {
            "n": len(idx),
            **rouge(texts, [rows[i]["reference"] for i in idx]),
            **output_stats(texts, [outputs[i][1] for i in idx], runaway_words),
        }
    return result


# -- model passes ---------------------------------------------------------------------------


def validation_nll(model, dataset, pad_token_id: int, batch_size: int = 4) -> tuple[float, int]:
    """Mean NLL (nats) of the label tokens over a tokenized split, and the token count.

    Batches of similar length, padded to their own longest; logits (B, T, V) are the
    memory peak, hence the small batch.
    """
    import torch
    import torch.nn.functional as F

    from trainer.train import PadToLongest

    collate = PadToLongest(pad_token_id)
    lengths = dataset["length"] if "length" in dataset.column_names else [len(x) for x in dataset["input_ids"]]
    order = sorted(range(len(dataset)), key=lambda i: lengths[i])
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = collate([dataset[i] for i in order[start : start + batch_size]])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            # Token t predicts token t+1: logits (B, T-1, V) against labels (B, T-1).
            targets = batch["labels"][:, 1:]
            nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                  ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((targets != -100).sum())
    model.train(was_training)
    if count == 0:
        raise TrainerError("eval: the validation split has no label tokens")
    return total / count, count


def _generate_all(gen, prompts: Sequence[str], settings, batch_size: int) -> list[tuple[str, bool]]:
    """One headline per prompt, generated in batches of similar prompt length."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[tuple[str, bool]] = [("", False)] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, g in zip(idx, gen.generate([prompts[i] for i in idx], settings)):
            out[i] = (g.texts[0], g.finished[0] if g.finished else True)
    return out


def _test_rows(examples: Sequence[Any], max_articles: int | None) -> list[dict]:
    """Test prompts of the first ``max_articles`` articles (both tasks of each)."""
    chosen: list[str] = []
    for ex in examples:
        if ex.article_id not in chosen:
            chosen.append(ex.article_id)
    keep = set(chosen[:max_articles] if max_articles else chosen)
    return [
        {"task": ex.task, "prompt": ex.prompt, "reference": ex.title, "theme": ex.theme,
         "category": ex.category, "article_id": ex.article_id}
        for ex in examples if ex.article_id in keep
    ]


# -- the evaluation -------------------------------------------------------------------------


def evaluate(run_dir: str | Path, cfg: Config) -> dict[str, Any]:
    """Score the run's model (and the base model) on the test split; write eval.json / eval.md.

    The run's own config.yml fixes model, data, prompts and split; ``cfg`` gives the
    eval and generation sections (so `--set eval.max_examples=20` works).
    """
    from trainer.dataset import build_dataset_dict
    from trainer.generation import GenerationSettings, Generator

    run_dir = runs.resolve_run(run_dir, cfg.train.output_dir)
    saved = run_dir / runs.CONFIG_YML
    run_cfg = load_config(saved) if saved.is_file() else cfg
    cfg = run_cfg.model_copy(update={"eval": cfg.eval, "generation": cfg.generation})
    meta = runs.read_run(run_dir)
    settings = GenerationSettings.from_config(cfg.generation, num_return=1)
    t0 = time.time()

    fine = Generator.load(str(run_dir), cfg)
    datasets, _, examples = build_dataset_dict(cfg, fine.tokenizer)
    rows = _test_rows(examples["test"], cfg.eval.max_examples)
    if not rows:
        raise TrainerError("eval: the test split is empty")
    prompts = [r["prompt"] for r in rows]
    log.info("evaluating %s on %d test prompts", run_dir.name, len(prompts))

    models: dict[str, dict] = {}
    outputs: dict[str, list[tuple[str, bool]]] = {}
    candidates = [("fine_tuned", lambda: fine)]
    if cfg.eval.compare_base:
        candidates.insert(0, ("base", lambda: Generator.load(cfg.model.name, cfg)))
    for key, load in candidates:
        gen = load()
        outputs[key] = _generate_all(gen, prompts, settings, cfg.eval.batch_size)
        nll, n_tokens = validation_nll(gen.model, datasets["validation"], gen.tokenizer.pad_token_id)
        models[key] = {
            "name": gen.info["name"] if key == "base" else run_dir.name,
            "val_loss": nll,
            "val_perplexity": math.exp(min(nll, 50.0)),
            "val_tokens": n_tokens,
            **score_outputs(rows, outputs[key], cfg.eval.runaway_words),
        }
        log.info("%s: ROUGE-L %.3f, validation perplexity %.2f", key,
                 models[key]["overall"]["rougeL"], models[key]["val_perplexity"])
        if gen is not fine:
            del gen

    result = {
        "run": meta.get("run_id", run_dir.name),
        "version": meta.get("version"),
        "base_model": cfg.model.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - t0, 1),
        "n_articles": len({r["article_id"] for r in rows}),
        "n_prompts": len(rows),
        "generation": asdict(settings),
        "models": models,
        "examples": _examples(rows, outputs, cfg.eval.examples_shown),
    }
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
    (run_dir / "eval.md").write_text(to_markdown(result), encoding="utf-8")
    _update_model_card(run_dir, result)
    return result


def _examples(rows: list[dict], outputs: dict[str, list], n: int) -> list[dict]:
    """``n`` rows alternating theme and article prompts, as far as there are both."""
    by_task = {task: [i for i, r in enumerate(rows) if r["task"] == task] for task in TASKS}
    picked: list[int] = []
    k = 0
    while len(picked) < n and any(k < len(v) for v in by_task.values()):
        for task in TASKS:
            if k < len(by_task[task]) and len(picked) < n:
                picked.append(by_task[task][k])
        k += 1
    out = []
    for i in picked:
        r = rows[i]
        out.append({
            "task": r["task"], "theme": r["theme"], "category": r["category"], "prompt": r["prompt"],
            "reference": r["reference"],
            "base": outputs["base"][i][0] if "base" in outputs else None,
            "fine_tuned": outputs["fine_tuned"][i][0],
        })
    return out


# -- reports --------------------------------------------------------------------------------

_METRICS = [
    ("ROUGE-1 F1", "rouge1", "{:.3f}"),
    ("ROUGE-2 F1", "rouge2", "{:.3f}"),
    ("ROUGE-L F1", "rougeL", "{:.3f}"),
    ("mean length (words)", "mean_words", "{:.1f}"),
    ("empty outputs", "empty_rate", "{:.1%}"),
    ("runaway outputs", "runaway_rate", "{:.1%}"),
]


def _cell(text: str | None, limit: int = 90) -> str:
    if text is None:
        return "–"
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text.replace("|", "\\|") or "*(empty)*"


def metrics_table(result: dict) -> str:
    """Markdown: one row per metric and task, base and fine-tuned side by side."""
    models = result["models"]
    keys = [k for k in ("base", "fine_tuned") if k in models]
    head = {"base": f"Base (`{result['base_model']}`, zero-shot)", "fine_tuned": "Fine-tuned"}
    lines = ["| Metric | Task | " + " | ".join(head[k] for k in keys) + " |",
             "|---|---|" + "---:|" * len(keys)]
    lines.append("| validation perplexity | all | "
                 + " | ".join(f"{models[k]['val_perplexity']:.2f}" for k in keys) + " |")
    for label, key, fmt in _METRICS:
        for task in ("overall", *TASKS):
            if task not in models[keys[0]]:
                continue
            cells = [fmt.format(models[k][task][key]) for k in keys]
            lines.append(f"| {label} | {'all' if task == 'overall' else task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_markdown(result: dict) -> str:
    gen = result["generation"]
    decoding = "greedy" if not gen["do_sample"] else (
        f"sampling (temperature {gen['temperature']}, top-p {gen['top_p']}, top-k {gen['top_k']})")
    lines = [
        f"# Evaluation: {result['run']}",
        "",
        f"{result['n_prompts']} test prompts from {result['n_articles']} articles "
        f"(theme and article prompts); decoding: {decoding}, repetition penalty "
        f"{gen['repetition_penalty']}, at most {gen['max_new_tokens']} new tokens. ROUGE is F1 "
        "against the real headline (stemmed); perplexity is over the headline tokens of the "
        "validation split.",
        "",
        metrics_table(result),
        "",
    ]
    if result["examples"]:
        lines += ["## Examples", "", "| Task | Prompt | Reference | Base | Fine-tuned |", "|---|---|---|---|---|"]
        for ex in result["examples"]:
            if ex["task"] == "theme":
                shown = f"{ex['theme']}" + (f" ({ex['category']})" if ex.get("category") else "")
            else:
                shown = ex["prompt"].split("\n")[-2] if "\n" in ex["prompt"] else ex["prompt"]
                shown = shown.removeprefix("Article: ")
            lines.append(f"| {ex['task']} | {_cell(shown, 70)} | {_cell(ex['reference'])} | "
                         f"{_cell(ex['base'])} | {_cell(ex['fine_tuned'])} |")
        lines.append("")
    return "\n".join(lines)


def _update_model_card(run_dir: Path, result: dict) -> None:
    from trainer.train import EVAL_MARKER

    card = run_dir / "MODEL_CARD.md"
    if not card.is_file():
        return
    text = card.read_text(encoding="utf-8")
    head = text.split(EVAL_MARKER, 1)[0].rstrip("\n")
    card.write_text(f"{head}\n\n{EVAL_MARKER}\n\n{metrics_table(result)}\n\nDetails and examples: eval.md\n",
                    encoding="utf-8")
