"""CPU instructions per cache hit: the API app against the bare app, counted, not timed.

    .venv/bin/python bench/hit_cpu.py [--requests 500]

`bench/serve.py` measures the cache-hit path through Nginx and Gunicorn in requests/s, which
on a shared 2-core machine moves by +-10% from one round to the next. This counts what the
application itself executes per request instead: each WSGI app (ours, `service.create_app`,
and the floor, `bench.serve:bare_app`) answers the same `POST /prompt` in a loop in its own
process under valgrind's callgrind, once with 50 requests and once with 50 + ``--requests``;
the difference of the two totals, divided by ``--requests``, is the instructions per request,
with start-up and imports cancelled out. Our app is also counted on `POST /v1/headlines` hits
(a theme and max_new_tokens, the other fields defaulted), beside the bare app's `/prompt`. For
the same code the count is the same from run to run whatever else the machine is doing. An
edit anywhere (this script included) moves both apps' counts by up to 3%, so compare the apps
of one run, and changes bigger than that.

Our app runs with the repo's config.yml (API keys off as configured; metrics, cache; its hits
take the cache-hit lane of service/hitlane.py), and once more with API keys and rate limits on
(a key of its own, whose check and per-minute count the lane does too), against a private
redis-server; its generator is a fixed stand-in,
as the cache-hit path never reaches the model (one request made beforehand, a MISS, fills the
cache through the batcher, so every counted request is a HIT; the last is checked). Needs
valgrind (Debian package `valgrind`). Takes about two minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.serve import HIT_REQUESTS  # noqa: E402 - the hits serve.py measures, by route

# What each child answers: the bare app and ours the original contract, "api-v1" our /v1/headlines
# with the usual body (the other fields take config.yml's defaults).
# "api-keys" is our /prompt with API keys and rate limits on (as in the compose stack).
REQUESTS = {name: (route, HIT_REQUESTS[route]) for name, route in
            (("bare", "/prompt"), ("api", "/prompt"), ("api-v1", "/v1/headlines"), ("api-keys", "/prompt"))}
WARM = 50  # requests of both runs: the first ones pay for lazy imports and first-call caches


class FixedGenerator:
    """Stands in for the model: one fixed headline for every prompt."""

    info = {"name": "fixed", "run": None, "version": "bench-hit-cpu"}
    weights = "float32"

    def prompt(self, *, theme=None, article=None, category=None) -> str:
        return f"Theme: {theme or article}\nHeadline:"

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompts, settings):
        from trainer.generation import Generation

        return [Generation(texts=["Oil prices climb as supply fears grow"], prompt_tokens=self.count_tokens(p),
                           completion_tokens=8, finished=[True]) for p in prompts]


def environ(path: str, body: bytes, extra: dict | None = None) -> dict:
    """What Gunicorn hands the app for a request that came through our Nginx."""
    return {"REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8001", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": True,
            "wsgi.run_once": False, "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8080",
            "HTTP_X_REQUEST_ID": "0f6c2a9e41d34b8c", "HTTP_X_FORWARDED_FOR": "127.0.0.1",
            "HTTP_X_FORWARDED_PROTO": "http", "HTTP_CONNECTION": "keep-alive", **(extra or {})}


def child(app_name: str, requests: int, redis_url: str) -> None:
    """Build one app and answer ``requests`` requests (run under callgrind by the parent)."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="hit-cpu-prom-")
    extra = None
    if app_name == "bare":
        os.environ["BENCH_REDIS_URL"] = redis_url
        from bench.serve import bare_app

        app = bare_app()
    else:
        from config import load_config
        from service import create_app

        overrides = ["service.warmup=false", f"service.cache.redis_url={redis_url}"]
        if app_name == "api-keys":  # a key of its own, a limit it never reaches
            from service.auth import KeyStore

            keys_file = Path(tempfile.mkdtemp(prefix="hit-cpu-keys-")) / "api_keys.json"
            _, key = KeyStore(keys_file).create("bench", ["generate"])
            extra = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
            overrides += ["service.auth.enabled=true", f"service.auth.keys_file={keys_file}",
                          "service.rate_limit.requests_per_minute=1000000000"]
        cfg = load_config(None, overrides)
        app = create_app(cfg, generator=FixedGenerator())
    path, payload = REQUESTS[app_name]
    data = json.dumps(payload).encode()
    status, headers = [], []

    def start_response(s, h, exc_info=None):
        status[:], headers[:] = [s], h

    body = b""
    for _ in range(requests):
        result = app(environ(path, data, extra), start_response)
        body = b"".join(result)
        getattr(result, "close", lambda: None)()
    x_cache = dict(headers).get("X-Cache")
    if not status[0].startswith("200") or (app_name != "bare" and x_cache != "HIT"):
        sys.exit(f"{app_name}: last answer {status[0]} X-Cache {x_cache}: {body[:200]!r}")


def child_command(app_name: str, requests: int, redis_url: str) -> list[str]:
    return [sys.executable, __file__, "--child", app_name, "--requests", str(requests), "--redis-url", redis_url]


def count(app_name: str, requests: int, redis_url: str, workdir: Path) -> int:
    """Instructions executed by one child process (callgrind's total)."""
    out = workdir / f"{app_name}-{requests}.log"
    with open(out, "w") as log:
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *child_command(app_name, requests, redis_url)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env=os.environ | {"PYTHONHASHSEED": "0"})  # same dict layouts in every run: same counts
    text = out.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{app_name} ({requests} requests) failed:\n{text[-2000:]}")
    match = re.search(r"Collected : (\d+)", text)
    if not match:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{text[-2000:]}")
    return int(match.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500, help="requests counted per app (after the first 50)")
    ap.add_argument("--child", choices=sorted(REQUESTS), help=argparse.SUPPRESS)
    ap.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.requests, args.redis_url)
        return 0
    if not shutil.which("valgrind"):
        print("valgrind not found: install it (apt-get install valgrind)", file=sys.stderr)
        return 2

    from bench.stack import Redis

    work = Path(tempfile.mkdtemp(prefix="headline-hit-cpu-"))
    redis_server = Redis(work / "redis").start()
    try:
        # Our app's first request is a MISS that fills the cache: made here, outside the counts,
        # so that every counted request of every run is a HIT.
        for name in ("api", "api-v1"):
            subprocess.run(child_command(name, 2, redis_server.url), check=True, cwd=REPO, capture_output=True)
        runs = [(name, n) for name in REQUESTS for n in (WARM, WARM + args.requests)]
        with ThreadPoolExecutor(max_workers=max(1, min(len(runs), os.cpu_count() or 1))) as pool:
            totals = dict(zip(runs, pool.map(lambda r: count(r[0], r[1], redis_server.url, work), runs)))
    finally:
        redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)
    per = {name: (totals[name, WARM + args.requests] - totals[name, WARM]) / args.requests for name in REQUESTS}
    print(f"Instructions per cache-hit request, in-process WSGI app ({args.requests} requests, callgrind):")
    print(f"  bare Flask + one Redis GET: {per['bare'] / 1000:.0f}K")
    print(f"  our app (POST /prompt, HIT): {per['api'] / 1000:.0f}K  ({per['api'] / per['bare']:.2f}x the bare app, "
          f"{(per['api'] - per['bare']) / 1000:+.0f}K)")
    print(f"  our app (POST /v1/headlines, HIT): {per['api-v1'] / 1000:.0f}K  "
          f"({per['api-v1'] / per['bare']:.2f}x the bare app)")
    print(f"  our app with API keys on (POST /prompt, HIT): {per['api-keys'] / 1000:.0f}K  "
          f"({per['api-keys'] / per['bare']:.2f}x the bare app)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
