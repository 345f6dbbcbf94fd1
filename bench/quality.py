"""Quality: fine-tune on the BBC News training split, score base vs fine-tuned on its test split.

Uses the product's own code path: ``trainer.train.train`` with config overrides
(``data.source=../shared/data/bbc_news/bbc_news.jsonl`` ...), then
``trainer.evaluate.evaluate`` (ROUGE-1/2/L, validation perplexity, length, empty and
runaway rates, theme and article prompts). Prints a Markdown table for the README.

    .venv/bin/python bench/quality.py                       # ~20-30 min on 2 idle CPU cores
    .venv/bin/python bench/quality.py --steps 40 --articles 200 --eval-articles 20   # quick look

The run folder (model, eval.md, loss curve) lands in --output-dir (default runs/bench).

``--weights float32,float16,int8`` then scores the run as the service would serve it, in each
precision (``service.weights``), on held-out articles: the first ``--weights-articles`` of the
data file that the run never saw (beyond its ``data.max_examples``), theme and article prompts,
greedy. It prints ROUGE per precision and how many headlines equal the first precision's.
``--run DIR`` skips the training and evaluation and compares an existing run of this script.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BBC = REPO.parent / "shared" / "data" / "bbc_news" / "bbc_news.jsonl"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="model.name (default: packaged SmolLM2)")
    p.add_argument("--data", default=str(BBC), help="articles (default: the BBC News JSONL in ../shared)")
    p.add_argument("--articles", type=int, default=400,
                   help="articles used in all (split 80/10/10 by category, fixed seed)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps of fine-tuning")
    p.add_argument("--article-tokens", type=int, default=96,
                   help="article text kept in a prompt, in tokens (prompt.article_max_tokens)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    p.add_argument("--eval-articles", type=int, default=30, help="test articles scored (2 prompts each)")
    p.add_argument("--eval-every", type=int, default=30, help="validation loss every N steps")
    p.add_argument("--output-dir", default="runs/bench")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=c",
                   help="any further config override")
    p.add_argument("--weights", default="", help="serving precisions to compare, e.g. float32,float16,int8")
    p.add_argument("--weights-articles", type=int, default=150, help="held-out articles for --weights")
    p.add_argument("--run", type=Path, help="compare --weights on this run instead of training one")
    return p.parse_args(argv)


def compare_weights(run_dir: Path, precisions: list[str], n_articles: int) -> str:
    """Markdown table: the run's greedy headlines on held-out articles in each serving precision."""
    from config import load_config
    from trainer.data import load_articles, split_articles
    from trainer.dataset import build_examples
    from trainer.evaluate import _generate_all, rouge
    from trainer.generation import GenerationSettings, Generator
    from trainer.themes import ThemeBuilder

    cfg = load_config(run_dir / "config.yml")
    seen, _ = load_articles(cfg.data)
    themes = ThemeBuilder(cfg.prompt.theme_keywords).fit(split_articles(seen, cfg.data.split, cfg.data.seed)["train"])
    every, _ = load_articles(cfg.data.model_copy(update={"max_examples": None}))
    seen_ids = {a.id for a in seen}
    held_out = [a for a in every if a.id not in seen_ids][:n_articles]
    if not held_out:
        raise SystemExit(f"{cfg.data.source}: no article left that the run did not see "
                         f"(it used {len(seen)}); train on fewer (--articles) to compare precisions")
    settings = GenerationSettings.from_config(cfg.generation, num_return=1)
    rows, first = [], None
    gen = None
    for weights in precisions:
        del gen  # one model in memory at a time
        gen = Generator.load(str(run_dir), cfg, weights=weights)
        examples = build_examples(held_out, themes, cfg.prompt, gen.tokenizer, cfg.data.seed, for_training=False)
        t0 = time.perf_counter()
        texts = [text for text, _ in _generate_all(gen, [e.prompt for e in examples], settings, 8)]
        seconds = time.perf_counter() - t0
        scores = {task: rouge([t for t, e in zip(texts, examples) if task in ("all", e.task)],
                              [e.title for e in examples if task in ("all", e.task)])
                  for task in ("all", "theme", "article")}
        first = first or (gen.weights, texts)  # what ran (float16 falls back to float32 without fbgemm)
        same = sum(a == b for a, b in zip(first[1], texts))
        rows.append(f"| {gen.weights} | " + " | ".join(f"{scores[t]['rougeL']:.3f}" for t in scores)
                    + f" | {scores['all']['rouge1']:.3f} / {scores['all']['rouge2']:.3f} | {same}/{len(texts)} "
                    f"| {seconds:.0f} s |")
    return "\n".join([
        f"Run `{run_dir.name}` in each serving precision: {len(held_out)} held-out articles x 2 prompts, greedy.",
        "",
        f"| Weights | ROUGE-L all | theme | article | ROUGE-1 / 2 all | headlines equal to {first[0]} | time |",
        "|---|---|---|---|---|---|---|", *rows])


def main(argv=None) -> int:
    args = parse_args(argv)
    if not Path(args.data).exists():
        print(f"data not found: {args.data}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("transformers", "datasets", "accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.WARNING)

    from config import load_config
    from trainer.evaluate import evaluate, metrics_table
    from trainer.train import train

    precisions = [w for w in args.weights.split(",") if w]
    if args.run:
        if not precisions:
            print("--run needs --weights", file=sys.stderr)
            return 2
        print(compare_weights(args.run, precisions, args.weights_articles))
        return 0

    overrides = [
        f"model.name={args.model}",
        f"data.source={args.data}",
        f"data.max_examples={args.articles}",
        f"train.output_dir={args.output_dir}",
        "train.run_name=bbc-quality",
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"prompt.article_max_tokens={args.article_tokens}",
        f"train.max_seq_len={max(64, args.article_tokens + 48)}",
        f"train.learning_rate={args.lr}",
        f"train.warmup_steps={min(20, args.steps // 10)}",
        f"train.eval_steps={args.eval_every}",
        f"train.save_steps={args.eval_every}",
        f"train.logging_steps={max(1, args.eval_every // 5)}",
        f"eval.max_examples={args.eval_articles}",
        *([f"train.num_threads={args.threads}"] if args.threads else []),
        *args.overrides,
    ]
    cfg = load_config(None, overrides)
    t0 = time.time()
    run_dir = train(cfg, evaluate_after=False)
    t_train = time.time() - t0
    result = evaluate(run_dir, cfg)
    t_eval = time.time() - t0 - t_train

    print()
    print(f"BBC News quality run `{run_dir.name}`: {args.model}, {args.articles} articles "
          f"(train/validation/test 80/10/10 by category), {args.steps} steps x batch {args.batch_size}, "
          f"lr {args.lr}, article cut to {args.article_tokens} tokens; test: {result['n_articles']} articles x 2 prompts; greedy decoding. "
          f"Training {t_train / 60:.1f} min, evaluation {t_eval / 60:.1f} min.")
    print()
    print(metrics_table(result))
    print()
    print(f"examples and details: {run_dir / 'eval.md'}")
    if precisions:
        print()
        print(compare_weights(run_dir, precisions, args.weights_articles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
