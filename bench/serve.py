"""Benchmark of the serving stack: ratios against baselines measured in the same run (loopback only).

    .venv/bin/python bench/serve.py [--model RUN_OR_MODEL] [--rounds 5] [--skip-miss] [--json OUT]

1. Cache-hit path through Nginx (2 Gunicorn instances, repo configs): requests/s and p50/p99
   at 16 connections, next to a bare Flask app doing one Redis GET behind the same Nginx and
   Gunicorn settings (the floor of this stack here). Target >= 80 % of the bare app.
2. Cache-miss generation: headlines/s and p50/p99 at concurrency 1 and 8, micro-batching on
   vs off (same two instances each, same Gunicorn threads, same torch threads). Target >= 3x
   at 8.
3. Worker cold start: process start to /readyz green, from a saved run, alternating with starts
   that leave the garbage collector on while the worker loads (HEADLINE_STARTUP_GC=on, the
   baseline: see service/startup.py). Target <= 10 s.

The machine may be shared, so both sides of each comparison are up at the same time and
measured in alternating rounds; the table gives medians over rounds and the load average.
Model (default): the packaged base model (config model.name, converted by
trainer.modeling.ensure_packaged_model) served from a run-shaped folder (model/ + run.json
with its weights' version), which is what a fine-tuned run looks like to the service.
``--model`` takes a run folder or any model.name value instead. A private redis-server on a
free port holds the cache. Prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BARE_VALUE = json.dumps({"response": "Oil prices climb as supply fears grow"})


def bare_app():
    """The floor: Flask + one Redis GET per request, nothing else (run by Gunicorn)."""
    import redis
    from flask import Flask, jsonify

    app = Flask("bare")
    client = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
    client.set("bench:bare", BARE_VALUE)

    @app.post("/prompt")
    def prompt():
        return jsonify(json.loads(client.get("bench:bare")))

    @app.get("/readyz")
    def ready():
        return {"status": "ready"}

    return app


# -- load generation: raw keep-alive sockets (http.client parses headers with the email
# package, which would make the client the bottleneck on a small machine) -----------------

def http_request(path: str, body: dict | None = None, headers: dict | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = [f"{'POST' if body is not None else 'GET'} {path} HTTP/1.1", "Host: 127.0.0.1",
            "Content-Type: application/json", f"Content-Length: {len(data)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def _read_response(sock: socket.socket, buf: bytearray) -> int:
    """Read one response off a keep-alive connection; returns its status code."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end]).decode("latin-1").lower()
    status = int(head.split(" ", 2)[1])
    length = 0
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    if "transfer-encoding: chunked" in head:
        while b"0\r\n\r\n" not in buf[end:]:
            buf += sock.recv(65536)
        del buf[: buf.index(b"0\r\n\r\n", end) + 5]
        return status
    while len(buf) < end + length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    del buf[: end + length]
    return status


def load(port: int, make_request, concurrency: int, *, total: int | None = None,
         seconds: float | None = None) -> dict:
    """``total`` requests (or as many as fit in ``seconds``) over ``concurrency`` connections.

    "rps" is the rate while ``concurrency`` requests are in flight. With ``total`` that is not the
    whole round: the round starts with every connection's first request at once and ends with
    its last requests draining (``concurrency`` - 1, ..., 1 in flight), which for a batching server
    means smaller and smaller batches. So from ``total`` >= 3 x ``concurrency`` requests the rate is
    counted between the ``concurrency``-th answer and the one that sends the last request (the
    (total - concurrency)-th): ``total`` - 2 x ``concurrency`` answers, all at full concurrency.
    "rps_round" is the whole round's rate (answers / round time)."""
    latencies: list[float] = []
    answered: list[float] = []  # when each successful answer arrived
    errors = [0]
    counter = iter(range(total if total is not None else 10**9))
    lock = threading.Lock()
    start = threading.Event()
    deadline = [0.0]

    def worker():
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        mine, mine_at = [], []
        start.wait()
        while time.perf_counter() < deadline[0]:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            req = make_request(i)
            t0 = time.perf_counter()
            try:
                sock.sendall(req)
                ok = _read_response(sock, buf) == 200
            except OSError:
                ok = False
                sock.close()
                sock = socket.create_connection(("127.0.0.1", port))
                buf.clear()
            if ok:
                now = time.perf_counter()
                mine.append(now - t0)
                mine_at.append(now)
            else:
                with lock:
                    errors[0] += 1
        sock.close()
        with lock:
            latencies.extend(mine)
            answered.extend(mine_at)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + (seconds if seconds is not None else 600.0)
    start.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    rps = rps_round = len(latencies) / elapsed
    answered.sort()
    k = concurrency
    # (Only without errors: a failed request has no answer time, and the window would shift.)
    if total is not None and k > 1 and not errors[0] and len(answered) >= 3 * k and answered[-k - 1] > answered[k - 1]:
        rps = (len(answered) - 2 * k) / (answered[-k - 1] - answered[k - 1])
    return {"rps": rps, "rps_round": rps_round, "p50": pct(0.5), "p99": pct(0.99), "errors": errors[0],
            "n": len(latencies)}


# -- the stacks -----------------------------------------------------------------------------

CONFIG_OVERRIDES: list[tuple[str, str]] = []  # --set key=value, applied to every stack's config


def write_config(path: Path, model: str, redis_url: str, batching: bool) -> Path:
    from config import ConfigDocument

    doc = ConfigDocument.read(REPO / "config/config.yml")
    for key, value in CONFIG_OVERRIDES:
        try:
            doc.set(key, json.loads(value))  # numbers and booleans as such
        except ValueError:
            doc.set(key, value)
    doc.set("service.model", model)
    doc.set("service.cache.redis_url", redis_url)
    doc.set("service.batching.enabled", batching)
    doc.save(path)
    return path


class Stack:
    """N Gunicorn instances (deploy/gunicorn.conf.py) behind Nginx (deploy/nginx/nginx.conf)."""

    def __init__(self, workdir: Path, env: dict, *, app: str | None = None, instances: int = 2):
        from bench.stack import Gunicorn

        self.dir = workdir
        self.apis = [Gunicorn(workdir, env, app=app) for _ in range(instances)]
        self.nginx = None

    def __enter__(self) -> Stack:
        from bench.stack import Nginx

        try:
            for api in self.apis:
                api.start()
            for api in self.apis:
                api.wait_ready(timeout=300)
            self.nginx = Nginx(self.dir / f"nginx-{self.apis[0].port}",
                               [f"127.0.0.1:{a.port}" for a in self.apis]).start()
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def port(self) -> int:
        return self.nginx.port

    def __exit__(self, *exc) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for api in self.apis:
            api.stop()


def run_folder_from_base(work: Path) -> tuple[str, str]:
    """A run-shaped folder around the packaged base model's safetensors (linked, not copied)."""
    from config import load_config
    from trainer.modeling import ensure_packaged_model, weights_version

    cfg = load_config()
    source = ensure_packaged_model(cfg.model.name, cfg.model.cache_dir)
    run = work / "runs" / "20260101-000000-bench-base"
    (run / "model").mkdir(parents=True)
    for f in source.iterdir():
        (run / "model" / f.name).symlink_to(f.resolve())
    # Hashed once here, as `headline train` does when it writes run.json: workers never hash.
    version = weights_version(source)
    (run / "run.json").write_text(json.dumps({
        "run_id": run.name, "name": "bench-base", "status": "finished", "version": version,
        "base_model": cfg.model.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    return str(run), f"{cfg.model.name} (packaged base model, run-shaped folder, version {version})"


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def median(values):
    return statistics.median(values) if values else float("nan")


# -- the three measurements -----------------------------------------------------------------

# The cache-hit rounds' request to our API, by route (--hit-route); the bare app always answers
# the /prompt one.
HIT_REQUESTS = {"/prompt": {"prompt": "oil price", "max_len": 16},
                "/v1/headlines": {"theme": "oil price", "max_new_tokens": 16}}


def bench_hit(work: Path, env: dict, model: str, redis_url: str, rounds: int, seconds: float,
              route: str = "/prompt") -> dict:
    cfg = write_config(work / "hit.yml", model, redis_url, True)
    bare_req = http_request("/prompt", HIT_REQUESTS["/prompt"])
    api_req = http_request(route, HIT_REQUESTS[route])
    with Stack(work, env | {"HEADLINE_CONFIG": str(cfg)}, app="bench.serve:bare_app()") as bare, \
            Stack(work, env | {"HEADLINE_CONFIG": str(cfg)}) as api:
        first = load(api.port, lambda i: api_req, 1, total=1)  # fills the cache (a MISS)
        assert first["errors"] == 0, "the API did not answer the cache-fill request"
        for port, req in ((bare.port, bare_req), (api.port, api_req)):  # warm connections, code paths
            load(port, lambda i, req=req: req, 16, seconds=2)
        runs = {"bare": [], "api": []}
        for r in range(rounds):
            for name, port, req in (("bare", bare.port, bare_req), ("api", api.port, api_req)) if r % 2 == 0 else \
                    (("api", api.port, api_req), ("bare", bare.port, bare_req)):
                runs[name].append(load(port, lambda i, req=req: req, 16, seconds=seconds))
            print(f"hit round {r + 1}: api {runs['api'][-1]['rps']:.0f} req/s, "
                  f"bare {runs['bare'][-1]['rps']:.0f} req/s", flush=True)
    ratios = [a["rps"] / b["rps"] for a, b in zip(runs["api"], runs["bare"])]
    return {name: {k: median([x[k] for x in rs]) for k in ("rps", "p50", "p99")} |
            {"errors": sum(x["errors"] for x in rs)} for name, rs in runs.items()} | {
        "ratio": median([x["rps"] for x in runs["api"]]) / median([x["rps"] for x in runs["bare"]]),
        "round_ratios": ratios, "route": route}


COUNTERS = {  # the instances' metrics that the cache-miss rounds read, summed over instances
    "batch_sum": "headline_batch_size_sum",  # requests in the batch summed over decoding steps
    "batch_steps": "headline_batch_size_count",  # decoding steps
    "tokens": "headline_generated_tokens_total",
    "refill_filled": 'headline_refill_wait_seconds_count{outcome="filled"}',  # refill waits, by outcome
    "refill_expired": 'headline_refill_wait_seconds_count{outcome="expired"}',
    "refill_seconds": "headline_refill_wait_seconds_sum",  # (both outcomes' lines)
}


def read_counters(metrics_text: str) -> dict[str, float]:
    """``COUNTERS`` in one /metrics text (Prometheus exposition format); a metric that a bare
    name stands for is summed over its labels."""
    out = dict.fromkeys(COUNTERS, 0.0)
    for line in metrics_text.splitlines():
        name, _, value = line.rpartition(" ")
        for key, metric in COUNTERS.items():
            if name == metric or (name.startswith(metric + "{") and "{" not in metric):
                out[key] += float(value)
    return out


def instance_counters(apis) -> dict[str, float]:
    """``COUNTERS`` read off the instances' /metrics, each summed over the instances."""
    from bench.stack import http_get

    texts = [read_counters(http_get(f"http://127.0.0.1:{api.port}/metrics")[1].decode()) for api in apis]
    return {key: sum(t[key] for t in texts) for key in COUNTERS}


def sample_themes() -> list[str]:
    """What users send: themes of the shipped sample news (or config data.source), built by the
    trainer's ThemeBuilder as for training ("oil opec cuts"): 9-11 prompt tokens with the
    template. Distinct, so that requests in flight together never share a generation."""
    from config import load_config
    from trainer.data import load_articles
    from trainer.themes import ThemeBuilder

    cfg = load_config()
    articles, _ = load_articles(cfg.data)
    return list(dict.fromkeys(ThemeBuilder(cfg.prompt.theme_keywords).fit(articles).themes(articles)))


def theme_source(kind: str):
    """(tag, i) -> the theme of request i of a round. "numbered": the earlier bench's
    "market news <round> <i>" (16 prompt tokens: the digits are a token each)."""
    if kind == "numbered":
        return lambda tag, i: f"market news {tag} {i}"
    pool = sample_themes()
    return lambda tag, i: pool[(zlib.crc32(tag.encode()) + i) % len(pool)]  # each round its own stretch


def bench_miss(work: Path, env: dict, model: str, redis_url: str, rounds: int, max_new_tokens: int,
               requests: int, themes) -> dict:
    stacks = {}
    for batching in (True, False):
        cfg = write_config(work / f"miss-{batching}.yml", model, redis_url, batching)
        stacks[batching] = Stack(work, env | {"HEADLINE_CONFIG": str(cfg)})

    def themed(tag: str):
        """Request i of a load: a theme of its own, so that every request generates. Both sides of
        a round get the same themes (tag): the same work, since headlines differ in length."""
        return lambda i: http_request("/v1/headlines", {"theme": themes(tag, i),
                                                        "max_new_tokens": max_new_tokens},
                                      {"Cache-Control": "no-cache"})

    results = {(b, c): [] for b in (True, False) for c in (1, 8)}
    # Over the batching side's concurrency-8 rounds: requests in the batch summed over decoding
    # steps, the steps, the tokens generated and the headlines answered.
    counted_sum = dict.fromkeys(COUNTERS, 0.0)
    headlines = 0
    with stacks[True] as on, stacks[False] as off:
        ports = {True: on.port, False: off.port}
        for port in ports.values():
            load(port, themed("warm-up"), 2, total=2)  # first request of each instance
        for r in range(rounds):
            # A round at concurrency 8 is long enough that its ramp-down (the last requests, with
            # fewer than 8 in flight) is a small part of it: this is a steady-state throughput.
            # Concurrency 1: 8 requests a round (3 made single rounds move by +-20%).
            for conc, total in ((1, max(3, requests // 8)), (8, requests)):
                order = (True, False) if r % 2 == 0 else (False, True)
                for batching in order:
                    counted = batching and conc == 8
                    before = instance_counters(on.apis) if counted else None
                    res = load(ports[batching], themed(f"{r}-{conc}"), conc, total=total)
                    if counted:  # the batching instances' own metrics, over these rounds only
                        after = instance_counters(on.apis)
                        for key in counted_sum:
                            counted_sum[key] += after[key] - before[key]
                        headlines += res["n"]
                    results[batching, conc].append(res)
                    print(f"miss round {r + 1} batching={batching} conc={conc}: {res['rps']:.2f} headlines/s "
                          f"(whole round {res['rps_round']:.2f}), "
                          f"p50 {res['p50']:.0f} ms, errors {res['errors']}", flush=True)
    c = counted_sum
    refills = c["refill_filled"] + c["refill_expired"]
    out = {"mean_batch_size": c["batch_sum"] / c["batch_steps"] if c["batch_steps"] else float("nan"),
           "tokens_per_headline": c["tokens"] / headlines if headlines else float("nan"),
           # Steps that waited for new requests after others finished (service.batching.refill_ms):
           # per headline, the share in which they came, and the mean wait.
           "refills_per_headline": refills / headlines if headlines else float("nan"),
           "refills_filled": c["refill_filled"] / refills if refills else float("nan"),
           "refill_wait_ms": 1000 * c["refill_seconds"] / refills if refills else float("nan")}
    for conc in (1, 8):
        summary = {}
        for batching in (True, False):
            rs = results[batching, conc]
            summary["on" if batching else "off"] = {k: median([x[k] for x in rs]) for k in ("rps", "rps_round", "p50", "p99")} | {
                "errors": sum(x["errors"] for x in rs)}
        summary["ratio"] = summary["on"]["rps"] / summary["off"]["rps"]
        summary["ratio_round"] = summary["on"]["rps_round"] / summary["off"]["rps_round"]
        summary["round_ratios"] = [on["rps"] / off["rps"] for on, off in zip(results[True, conc], results[False, conc])]
        out[conc] = summary
    return out


def bench_cold(work: Path, env: dict, model: str, redis_url: str, repeats: int) -> dict:
    """Starts of one instance, alternating with starts whose collector is left on during the
    start (``HEADLINE_STARTUP_GC=on``, service/startup.py): the baseline of the same run."""
    from bench.stack import Gunicorn, http_get

    cfg = write_config(work / "cold.yml", model, redis_url, True)
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(repeats):
        for gc_mode in ("off", "on"):
            api = Gunicorn(work, env | {"HEADLINE_CONFIG": str(cfg), "HEADLINE_STARTUP_GC": gc_mode})
            t0 = time.perf_counter()
            api.start()
            try:
                while http_get(f"http://127.0.0.1:{api.port}/readyz", timeout=2)[0] != 200:
                    if api.proc.poll() is not None or time.perf_counter() - t0 > 300:
                        raise RuntimeError(f"instance did not become ready: {api.tail()}")
                    time.sleep(0.05)  # polling granularity: at most 50 ms added
                times[gc_mode].append(time.perf_counter() - t0)
            finally:
                api.stop()
            print(f"cold start{'' if gc_mode == 'off' else ', collector on during the start'}: "
                  f"{times[gc_mode][-1]:.2f} s", flush=True)
    return {"median": median(times["off"]), "all": times["off"],
            "gc_on_median": median(times["on"]), "gc_on_all": times["on"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", "--run", dest="model",
                    help="run folder or model.name value to serve (default: the packaged base model "
                         "in a run-shaped folder)")
    ap.add_argument("--rounds", type=int, default=15, help="alternating rounds of the cache-hit comparison")
    ap.add_argument("--hit-seconds", type=float, default=3.0, help="length of one cache-hit round")
    ap.add_argument("--miss-rounds", type=int, default=5,
                    help="alternating rounds of the cache-miss comparison (each: concurrency 1, then 8)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--miss-requests", type=int, default=64, help="requests per cache-miss round at concurrency 8")
    ap.add_argument("--themes", choices=("sample", "numbered"), default="sample",
                    help="cache-miss requests' themes: built from the sample news as for training "
                         "(default), or the earlier 'market news <round> <i>'")
    ap.add_argument("--hit-route", choices=sorted(HIT_REQUESTS), default="/prompt",
                    help="the route whose cache hits are measured against the bare app's /prompt")
    ap.add_argument("--cold-repeats", type=int, default=3)
    ap.add_argument("--skip-hit", action="store_true")
    ap.add_argument("--skip-miss", action="store_true")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config.yml override for every stack, e.g. service.batching.window_ms=50")
    args = ap.parse_args()
    CONFIG_OVERRIDES.extend(tuple(item.split("=", 1)) for item in args.set)

    sys.path.insert(0, str(REPO))
    from bench.stack import Redis, clean_env

    work = Path(tempfile.mkdtemp(prefix="headline-bench-"))
    redis_server = Redis(work / "redis").start()
    try:
        if args.model:
            model, model_note = args.model, f"{args.model} (given)"
        else:
            model, model_note = run_folder_from_base(work)
        print(f"model: {model_note}", flush=True)
        env = clean_env(HEADLINE_THREADS="16", HEADLINE_WORKERS="1", HEADLINE_LOG_LEVEL="warning",
                        BENCH_REDIS_URL=redis_server.url, TOKENIZERS_PARALLELISM="false")
        load_before = loadavg()
        results: dict = {"model": model_note, "load_before": load_before}
        if not args.skip_hit:
            results["hit"] = bench_hit(work, env, model, redis_server.url, args.rounds, args.hit_seconds,
                                       args.hit_route)
        if not args.skip_miss:
            results["miss"] = bench_miss(work, env, model, redis_server.url, args.miss_rounds,
                                         args.max_new_tokens, args.miss_requests, theme_source(args.themes))
        if not args.skip_cold:
            results["cold"] = bench_cold(work, env, model, redis_server.url, args.cold_repeats)
        results["load_after"] = loadavg()
    finally:
        redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


def refill_note(miss: dict) -> str:
    """The batching side's refill waits (service.batching.refill_ms), when there were any."""
    if not miss["refills_per_headline"] > 0:
        return ""
    return (f", refill waits {miss['refills_per_headline']:.2f} a headline, {miss['refills_filled']:.0%} filled, "
            f"{miss['refill_wait_ms']:.1f} ms on average")


def print_table(results: dict, args) -> None:
    from bench.machine import cpu_name  # here, not at the top: Gunicorn imports this module as bench.serve

    cpu = cpu_name()
    print(f"\nMachine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}; load average {results['load_before']} before, "
          f"{results['load_after']} after.\nModel: {results['model']}. Config: repo config.yml"
          f"{' with ' + ', '.join(args.set) if args.set else ''}. 2 Gunicorn instances x 1 gthread "
          "worker x 16 threads, Nginx, private Redis, loopback; medians over alternating rounds.\n")
    print("| Measure | Result | p50 / p99 | Baseline (same run) | Ratio | Target | Failed |")
    print("|---|---|---|---|---|---|---|")
    if "hit" in results:
        h = results["hit"]
        a, b = h["api"], h["bare"]
        print(f"| Cache hit, POST {h['route']}, 16 connections | {a['rps']:.0f} req/s | {a['p50']:.1f} / {a['p99']:.1f} ms "
              f"| bare Flask + 1 Redis GET: {b['rps']:.0f} req/s, {b['p50']:.1f} / {b['p99']:.1f} ms "
              f"| {h['ratio']:.1%} (rounds {min(h['round_ratios']):.0%}-{max(h['round_ratios']):.0%}) "
              f"| >= 80% | {a['errors'] + b['errors']} |")
    for conc, m in results.get("miss", {}).items():
        if conc not in (1, 8):  # the batching side's counters
            continue
        on, off = m["on"], m["off"]
        print(f"| Cache miss, {args.max_new_tokens} new tokens, concurrency {conc} | {on['rps']:.2f} headlines/s "
              f"| {on['p50']:.0f} / {on['p99']:.0f} ms | no batching: {off['rps']:.2f} headlines/s, "
              f"{off['p50']:.0f} / {off['p99']:.0f} ms | {m['ratio']:.2f}x (rounds "
              f"{min(m['round_ratios']):.2f}-{max(m['round_ratios']):.2f}x"
              + (f", mean batch {results['miss']['mean_batch_size']:.1f}, "
                 f"{results['miss']['tokens_per_headline']:.1f} tokens a headline{refill_note(results['miss'])}; "
                 "whole rounds, drain included: "
                 f"{m['ratio_round']:.2f}x)" if conc == 8 else ")")
              + f" | {'>= 3x' if conc == 8 else '-'} "
              f"| {on['errors'] + off['errors']} |")
    if "cold" in results:
        c = results["cold"]
        print(f"| Worker cold start (process start to /readyz 200) | {c['median']:.1f} s "
              f"(runs {', '.join(f'{t:.1f}' for t in c['all'])}) | | collector on during the start: "
              f"{c['gc_on_median']:.1f} s (runs {', '.join(f'{t:.1f}' for t in c['gc_on_all'])}) "
              f"| {c['gc_on_median'] / c['median']:.2f}x faster | <= 10 s | 0 |")


if __name__ == "__main__":
    sys.exit(main())
