"""The ``headline`` command line (docs/CONTRACTS.md): train, eval, generate, data, wizard.

Each subcommand is registered by one small ``_add_<name>(subparsers)`` function
listed in ``SUBCOMMANDS``; its handler imports what it needs lazily, so
``headline --help`` and ``headline wizard`` start without torch. To add one
(e.g. the service's ``serve``), write ``_add_serve`` that adds a parser and sets
``func=<handler(args) -> int>``, and append it to SUBCOMMANDS.

Logging is configured here and nowhere else. Exit codes: 0 ok, 1 unexpected
error, 2 usage or config error (the message names the key), 3 data/model error,
130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from trainer.errors import TrainerError

log = logging.getLogger("headline")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DATA, EXIT_CANCELLED = 0, 1, 2, 3, 130


class UsageError(Exception):
    """Bad combination of command-line arguments (exit 2)."""


# -- shared options -------------------------------------------------------------------------


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help=f"config file (default: {DEFAULT_CONFIG_PATH.name} in the config package)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=c",
                        help="override one config value, e.g. --set train.learning_rate=3e-5 (repeatable)")


def _load(args: argparse.Namespace):
    return load_config(args.config, args.overrides)


# -- train ----------------------------------------------------------------------------------


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="fine-tune the base model on the configured data")
    _config_options(p)
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN",
                   help="continue a cancelled or killed run from its last checkpoint "
                        "(default: the newest unfinished run)")
    p.add_argument("--progress-json", type=Path, default=None, metavar="FILE",
                   help="also write progress as JSON lines to FILE (for the wizard)")
    p.add_argument("--dry-run", action="store_true",
                   help="build the dataset, print formatted examples and token statistics, do not train")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    cfg = _load(args)
    if args.dry_run:
        from trainer.dataset import dry_run_text
        from trainer.modeling import load_tokenizer, resolve_model_source

        tokenizer = load_tokenizer(resolve_model_source(cfg.model.name, cfg.model), cfg.model)
        print(dry_run_text(cfg, tokenizer, 3))
        return EXIT_OK
    from trainer.train import TrainingCancelled, train

    try:
        run_dir = train(cfg, resume=args.resume, progress_json=args.progress_json,
                        evaluate_after=not args.no_eval)
    except TrainingCancelled as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CANCELLED
    if (run_dir / "eval.json").exists():
        from trainer.evaluate import metrics_table

        print(metrics_table(json.loads((run_dir / "eval.json").read_text())))
        print(f"evaluation with example rows: {run_dir / 'eval.md'}")
    print(f"run finished: {run_dir}")
    return EXIT_OK


# -- eval -----------------------------------------------------------------------------------


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score a run on its test split, base model beside it")
    p.add_argument("run", metavar="RUN", help="run folder, runs/latest, or run id")
    _config_options(p)
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    cfg = _load(args)
    from trainer.evaluate import evaluate, metrics_table
    from trainer.runs import resolve_run

    run_dir = resolve_run(args.run, cfg.train.output_dir)
    result = evaluate(run_dir, cfg)
    print(metrics_table(result))
    print(f"\nwritten: {run_dir / 'eval.json'}, {run_dir / 'eval.md'}")
    return EXIT_OK


# -- generate -------------------------------------------------------------------------------


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="write headlines for a theme or an article")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--theme", action="append", help='a short theme, e.g. "oil price" (repeatable)')
    what.add_argument("--article", type=Path, metavar="FILE", help="a text file with the article ('-' = stdin)")
    p.add_argument("--category", default=None, help="the news category, e.g. business (optional)")
    p.add_argument("--n", type=int, default=None, metavar="N", help="headlines to write (generation.num_headlines)")
    p.add_argument("--run", default=None, metavar="RUN",
                   help="run folder or any model.name value (default: service.model, i.e. runs/latest; "
                        "the base model when there is no finished run)")
    p.add_argument("--compare-base", action="store_true",
                   help="also show the base model's headline for the same prompt (zero-shot)")
    dec = p.add_argument_group("decoding (override the generation section)")
    dec.add_argument("--temperature", type=float, default=None)
    dec.add_argument("--top-p", type=float, default=None)
    dec.add_argument("--top-k", type=int, default=None)
    dec.add_argument("--repetition-penalty", type=float, default=None)
    dec.add_argument("--max-new-tokens", type=int, default=None)
    dec.add_argument("--seed", type=int, default=None)
    mode = dec.add_mutually_exclusive_group()
    mode.add_argument("--sample", dest="do_sample", action="store_const", const=True, default=None,
                      help="sample (with temperature / top-p / top-k)")
    mode.add_argument("--greedy", dest="do_sample", action="store_const", const=False,
                      help="greedy decoding (deterministic)")
    _config_options(p)
    p.set_defaults(func=_cmd_generate)


def _generation_overrides(args) -> list[str]:
    """Decoding flags as ``generation.*`` overrides, so the schema checks their ranges."""
    pairs = {
        "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty, "max_new_tokens": args.max_new_tokens,
        "seed": args.seed, "do_sample": args.do_sample, "num_headlines": args.n,
    }
    return [f"generation.{k}={json.dumps(v)}" for k, v in pairs.items() if v is not None]


def _cmd_generate(args) -> int:
    cfg = load_config(args.config, [*args.overrides, *_generation_overrides(args)])
    from trainer.generation import GenerationSettings, Generator
    from trainer.runs import resolve_run

    ref = args.run or cfg.service.model
    try:
        ref = str(resolve_run(ref, cfg.train.output_dir))
    except TrainerError:
        if args.run is not None and not Path(args.run).name == "latest":
            ref = args.run  # not a run: a model.name value (packaged name, hub id, folder)
        else:
            print(f"note: no finished run at {ref}; using the base model {cfg.model.name} "
                  "(train one with `headline train`)", file=sys.stderr)
            ref = cfg.model.name
    gen = Generator.load(ref, cfg)
    if args.article is not None:
        text = sys.stdin.read() if str(args.article) == "-" else _read_article(args.article)
        items = [("article", gen.prompt(article=text, category=args.category))]
    else:
        items = [(theme, gen.prompt(theme=theme, category=args.category)) for theme in args.theme]
    settings = GenerationSettings.from_config(cfg.generation)
    prompts = [prompt for _, prompt in items]
    results = gen.generate(prompts, settings)
    base_results = None
    if args.compare_base and gen.info["run"] is not None:
        base = Generator.load(gen.info["name"], cfg)
        base_results = base.generate(prompts, settings)
    if len(items) == 1 and base_results is None:
        for text in results[0].texts:
            print(text)
        return EXIT_OK
    for i, (label, _) in enumerate(items):
        print(f"{label}:")
        for text in results[i].texts:
            print(f"  fine-tuned: {text}" if base_results else f"  {text}")
        for text in base_results[i].texts if base_results else []:
            print(f"  base:       {text}")
    return EXIT_OK


def _read_article(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise TrainerError(f"--article: cannot read {path}: {exc.strerror}") from None


# -- data -----------------------------------------------------------------------------------


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="look at the configured data")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="{preview,report}")
    pv = dsub.add_parser("preview", help="the source's columns and first rows as mapped")
    _config_options(pv)
    pv.add_argument("--rows", type=int, default=5, metavar="N")
    pv.add_argument("--json", action="store_true", help="print JSON (for the wizard)")
    pv.set_defaults(func=_cmd_data_preview)
    rp = dsub.add_parser("report", help="load and clean the data; print the cleaning report")
    _config_options(rp)
    rp.add_argument("--json", action="store_true", help="print JSON (for the wizard)")
    rp.set_defaults(func=_cmd_data_report)


def _cmd_data_preview(args) -> int:
    cfg = _load(args)
    from trainer.data import preview

    result = preview(cfg.data, rows=args.rows)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return EXIT_OK
    print("columns: " + ", ".join(map(str, result["columns"])))
    for i, row in enumerate(result["rows"], 1):
        print(f"\n[{i}]")
        for key, value in row.items():
            print(f"  {key}: {value}")
    return EXIT_OK


def _cmd_data_report(args) -> int:
    cfg = _load(args)
    from trainer.data import load_articles, split_articles

    articles, report = load_articles(cfg.data)
    try:
        splits = split_articles(articles, cfg.data.split, cfg.data.seed)
        report.splits = {name: len(items) for name, items in splits.items()}
    except TrainerError:
        pass  # too few articles to split: the report still says what was loaded
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        print(report.to_markdown())
    return EXIT_OK


# -- wizard ---------------------------------------------------------------------------------


def _add_wizard(sub) -> None:
    p = sub.add_parser("wizard", help="the terminal wizard (configure, train, try)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_wizard)


def _cmd_wizard(args) -> int:
    from tui.app import main as wizard_main

    return wizard_main(args.rest) or EXIT_OK


def _add_keys(sub) -> None:
    from service.keys_cli import add_parser

    add_parser(sub)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="start/stop the local stack: Redis, two Gunicorn, Nginx")
    p.add_argument("action", nargs="?", default="start", choices=["start", "stop", "status", "restart"])
    p.add_argument("--port", type=int, help="Nginx port (default 8080, or $HEADLINE_PORT)")
    p.add_argument("--run", help="run folder or model name to serve (default: service.model)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args) -> int:
    env = dict(os.environ)
    if args.port:
        env["HEADLINE_PORT"] = str(args.port)
    if args.run:
        env["HEADLINE_MODEL"] = args.run
    script = Path(__file__).resolve().parent.parent / "deploy" / "serve.sh"
    return subprocess.call(["bash", str(script), args.action], env=env)


SUBCOMMANDS: list[Callable] = [_add_train, _add_eval, _add_generate, _add_data, _add_wizard,
                               _add_keys, _add_serve]


# -- entry point ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headline", description="Fine-tune a language model into a news-headline writer.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
                        stream=sys.stderr, force=True)
    # Libraries speak up only for warnings; our own modules log at info.
    for name in ("transformers", "datasets", "accelerate", "peft", "urllib3", "filelock", "matplotlib"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not verbose:
        # transformers draws a bar per weight load and save (read when it is imported,
        # which is later and lazily); ours is the training bar.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    _configure_logging(args.verbose)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"usage error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except BrokenPipeError:  # `headline generate ... | head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
