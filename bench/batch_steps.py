"""In-process ceiling of micro-batching: one request at a time against N always in the batch.

    .venv/bin/python bench/batch_steps.py [--model RUN_OR_MODEL] [--weights float16] [--rows 4]
                                          [--repeats 3] [--profile] [--json OUT]

What `bench/serve.py`'s cache-miss ratio is made of, without HTTP, Nginx or a second process:
one Generator in this process (torch threads as a worker's: `service.torch_threads`), the same
sample themes, greedy headlines of at most `--max-new-tokens` tokens.

- **alone**: each request opens its own batch and decodes to its end (what a worker with
  batching off does).
- **batched**: `--rows` requests in the batch at all times; a request that ends is replaced in
  the same step by the next one, as the service's refill does (`DecodeBatch.step`'s `refill`).
  Its rate is counted from the `--rows`-th answer to the answer before the last request
  joins, so the ramp-up and the drain do not count.

The two alternate `--repeats` times; the ratio is alone / batched milliseconds a request. Every
step's time is kept by what went into its model call (rows decoding, prompts joining), which
gives a 1-row step, an N-row step and what a joining prompt adds to a step. Each request's
headline must equal its alone headline (the batching contract); the script exits 1 if one
differs. ``--profile`` adds the operators (`torch.profiler`, self CPU time) of a plain N-row
step and of one where a prompt joins.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class Timed:
    """A decoding batch whose steps are timed and keyed by (rows after the step, prompts it fed).

    A prompt added before a step or by its refill joins that step: packed batches run it in the
    step's model call, the general path prefills it in ``add``, whose time then counts in the
    step it joins."""

    def __init__(self, generator, steps: dict, profile=None):
        self.batch = generator.open_batch()
        self.steps, self.profile = steps, profile
        self.joining, self.added, self.in_step = 0, 0.0, False
        # (time, request, headline, tokens generated) as answered
        self.answers: list[tuple[float, int, str, int]] = []

    def add(self, request: int, prompt: str, settings) -> None:
        t0 = time.perf_counter()
        self.batch.add([(prompt, settings, request)])
        if not self.in_step:
            self.added += time.perf_counter() - t0
        self.joining += 1

    def step(self, refill=None) -> None:
        def on_done(tag, result):
            self.answers.append((time.perf_counter(), tag, result.texts[0], result.completion_tokens))

        t0 = time.perf_counter()
        self.in_step = True
        try:
            with self.profile() if self.profile is not None else contextlib.nullcontext() as prof:
                self.batch.step(on_done=on_done, refill=refill)
        finally:
            self.in_step = False
        key = (self.batch.rows, self.joining)
        self.steps[key].append(time.perf_counter() - t0 + self.added)
        if self.profile is not None:
            self.profile.keep(key, prof)
        self.joining, self.added = 0, 0.0


def run_alone(generator, prompts, settings, steps) -> tuple[float, dict[int, str], list[int]]:
    """Milliseconds a request, one at a time; each request's headline; tokens of each."""
    texts, tokens = {}, []
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        b = Timed(generator, steps)
        b.add(i, prompt, settings)
        while len(b.batch):
            b.step()
        texts.update((tag, text) for _, tag, text, _ in b.answers)
        tokens += [n for _, _, _, n in b.answers]
    return (time.perf_counter() - t0) * 1e3 / len(prompts), texts, tokens


def run_batched(generator, prompts, settings, rows: int, steps, profile=None) -> tuple[float, dict[int, str]]:
    """Milliseconds a request with ``rows`` always in the batch (steady state); each headline."""
    b = Timed(generator, steps, profile)
    queue = list(enumerate(prompts))
    for i, prompt in queue[:rows]:
        b.add(i, prompt, settings)
    queue = queue[rows:]

    def refill(finished: int) -> None:
        for _ in range(min(finished, len(queue))):
            b.add(*queue.pop(0), settings)

    last_join = None
    while len(b.batch) or queue:
        # Between steps: the general path's joins, and a packed batch whose rows all ended at once
        # (its step refills only while some go on).
        if queue and len(b.batch) < rows:
            refill(rows - len(b.batch))
        b.step(refill=refill)
        if queue == [] and last_join is None:
            last_join = len(b.answers)  # answers before the last request joined
    times = [t for t, _, _, _ in b.answers]
    first, last = rows - 1, (last_join or len(times)) - 1
    if last <= first:  # too few requests for a steady state
        raise SystemExit(f"too few requests to count a steady state: {len(prompts)} for {rows} rows")
    ms = (times[last] - times[first]) * 1e3 / (last - first)
    return ms, {tag: text for _, tag, text, _ in b.answers}


class Profile:
    """torch.profiler around chosen steps: operators' self CPU time summed by step kind."""

    def __init__(self, keys):
        self.keys = set(keys)
        self.ops = {key: Counter() for key in self.keys}
        self.count = Counter()

    @contextlib.contextmanager
    def __call__(self):
        from torch.profiler import ProfilerActivity, profile, record_function

        from trainer import cpu_linear

        # trainer._f16's products are Python calls, not operators: named here so that they show
        call = cpu_linear._Panels.__call__

        def product(panels, x):
            with record_function("trainer._f16::product"):
                return call(panels, x)

        cpu_linear._Panels.__call__ = product
        try:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                yield prof
        finally:
            cpu_linear._Panels.__call__ = call

    def keep(self, key, prof) -> None:
        if key in self.keys:
            self.count[key] += 1
            for event in prof.key_averages():
                self.ops[key][event.key] += event.self_cpu_time_total / 1e3  # ms


def median_ms(values) -> float | None:
    return statistics.median(values) * 1e3 if values else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="run folder or model.name value (default: config model.name, "
                                    "the packaged base model)")
    ap.add_argument("--weights", choices=("float16", "float32", "int8"),
                    help="served precision (default: service.weights)")
    ap.add_argument("--rows", type=int, default=4, help="requests always in the batch (the stack at "
                                                         "concurrency 8 gives each of its 2 workers 4)")
    ap.add_argument("--requests", type=int, default=40, help="requests of an alone run; a batched run "
                                                             "takes twice as many")
    ap.add_argument("--repeats", type=int, default=3, help="alternating alone / batched runs")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, help="torch threads (default: service.torch_threads)")
    ap.add_argument("--themes", choices=("sample", "numbered"), default="sample")
    ap.add_argument("--profile", action="store_true", help="operators of a plain and a joining step")
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args(argv)
    if args.rows < 2 or args.requests < 2 * args.rows:
        ap.error("--rows must be at least 2 and --requests at least twice --rows")

    import torch

    from bench.machine import cpu_name
    from bench.serve import theme_source
    from config import load_config
    from trainer.generation import GenerationSettings, Generator

    cfg = load_config()
    threads = args.threads or cfg.service.torch_threads
    torch.set_num_threads(threads)
    weights = args.weights or cfg.service.weights
    model = args.model or cfg.model.name
    generator = Generator.load(model, cfg, weights=weights)
    settings = GenerationSettings.from_config(cfg.generation, max_new_tokens=args.max_new_tokens,
                                              num_return=1, do_sample=False)
    themes = theme_source(args.themes)

    def prompts(tag: str, n: int) -> list[str]:
        return [generator.prompt(theme=themes(tag, i)) for i in range(n)]

    steps: dict[tuple[int, int], list[float]] = defaultdict(list)
    run_alone(generator, prompts("warm", 4), settings, defaultdict(list))
    run_batched(generator, prompts("warm", 2 * args.rows + 2), settings, args.rows, defaultdict(list))

    rounds, differ, tokens, compared = [], [], [], 0
    for r in range(args.repeats):
        # Both sides of a repeat decode the same prompts: the same work, whatever each headline's length.
        alone_p = prompts(f"r{r}", args.requests)
        batched_p = alone_p + prompts(f"r{r}b", args.requests)
        alone_ms, alone_texts, alone_tokens = run_alone(generator, alone_p, settings, steps)
        batched_ms, batched_texts = run_batched(generator, batched_p, settings, args.rows, steps)
        for i, text in alone_texts.items():
            compared += 1
            if batched_texts.get(i) != text:
                differ.append((alone_p[i], text, batched_texts.get(i)))
        tokens += alone_tokens
        rounds.append({"alone_ms": alone_ms, "batched_ms": batched_ms, "ratio": alone_ms / batched_ms})
        print(f"repeat {r + 1}: alone {alone_ms:.1f} ms a request, {args.rows} always in the batch "
              f"{batched_ms:.1f} ms: {alone_ms / batched_ms:.2f}x", flush=True)

    profile = None
    if args.profile:
        profile = Profile([(args.rows, 0), (args.rows, 1)])
        run_batched(generator, prompts("profile", 2 * args.requests), settings, args.rows,
                    defaultdict(list), profile)

    n = args.rows
    step = {
        "prompt alone": median_ms(steps[1, 1]),
        "1-row step": median_ms(steps[1, 0]),
        f"{n}-row step": median_ms(steps[n, 0]),
        f"{n}-row step with a prompt joining": median_ms(steps[n, 1]),
    }
    plain, joined, one = step[f"{n}-row step"], step[f"{n}-row step with a prompt joining"], step["1-row step"]
    result = {
        "machine": cpu_name(), "model": model, "version": generator.info.get("version"),
        "weights": weights, "threads": threads, "rows": n, "themes": args.themes,
        "max_new_tokens": args.max_new_tokens, "rounds": rounds,
        "ratio": statistics.median(x["ratio"] for x in rounds),
        "tokens_a_headline": statistics.mean(tokens) if tokens else None,
        "steps_ms": step,
        "per_extra_row_ms": (plain - one) / (n - 1) if plain and one else None,
        "join_adds_ms": joined - plain if joined and plain else None,
        "headlines_compared": compared, "headlines_differing": len(differ),
    }
    if profile is not None:
        result["profile_ms"] = {
            f"{rows} rows, {joins} joining ({profile.count[rows, joins]} steps)":
                {op: ms / max(profile.count[rows, joins], 1) for op, ms in profile.ops[rows, joins].most_common(12)}
            for rows, joins in sorted(profile.keys)}

    print(f"\nMachine: {result['machine']}; torch threads {threads}. Model: {model} "
          f"({weights}), {result['tokens_a_headline']:.1f} tokens a headline, {args.themes} themes.\n")
    print("| Alone | Batched | Ratio | Rounds |\n|---|---|---|---|")
    print(f"| {statistics.median(x['alone_ms'] for x in rounds):.1f} ms a request "
          f"| {statistics.median(x['batched_ms'] for x in rounds):.1f} ms a request ({n} always in the batch) "
          f"| **{result['ratio']:.2f}x** | {', '.join(format(x['ratio'], '.2f') + 'x' for x in rounds)} |\n")
    print("| Step (medians) | ms |\n|---|---|")
    for name, ms in step.items():
        print(f"| {name} | {ms:.1f} |" if ms is not None else f"| {name} | - |")
    if result["per_extra_row_ms"] is not None:
        print(f"| each row beyond the first | {result['per_extra_row_ms']:.1f} |")
    if result["join_adds_ms"] is not None:
        print(f"| a joining prompt adds | {result['join_adds_ms']:.1f} |")
    for kind, ops in result.get("profile_ms", {}).items():
        print(f"\nOperators of a step with {kind}, self CPU ms a step (profiler overhead included):")
        for op, ms in ops.items():
            print(f"  {op:50s} {ms:7.2f}")
    print(f"\nHeadlines equal alone and batched: {compared - len(differ)} of {compared}")
    for prompt, alone_text, batched_text in differ[:5]:
        print(f"  DIFFERS {prompt!r}: alone {alone_text!r}, batched {batched_text!r}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
