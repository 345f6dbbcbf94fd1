"""Benchmark of the serving stack, ratios from one run on one machine (loopback only).

    python bench/serve.py [--run RUNS_DIR_OR_MODEL] [--hit-requests 3000] [--miss-requests 24]

1. Cache-hit path through Nginx (2 Gunicorn instances, repo configs): requests/s, p50/p99 at
   16 connections, next to a bare Flask app doing one Redis GET behind the same Nginx and
   Gunicorn settings (the floor of this stack here). Target >= 80 % of the bare app.
2. Cache-miss generation: headlines/s, p50/p99 at concurrency 1 and 8, micro-batching on vs
   off. Target >= 3x at 8.
3. Worker cold start: process start to /readyz green. Target <= 10 s.

Model: --run (a run folder or any model.name value), else runs/latest when it exists, else
the packaged base model (config model.name). Prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PY = REPO / ".venv/bin/python" if (REPO / ".venv/bin/python").exists() else Path(sys.executable)
GUNICORN = PY.parent / "gunicorn"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def bare_app():
    """The floor: Flask + one Redis GET per request, nothing else (run by Gunicorn)."""
    import redis
    from flask import Flask, jsonify

    app = Flask("bare")
    client = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
    client.set("bench:bare", json.dumps({"response": "Oil prices climb as supply fears grow"}))

    @app.post("/prompt")
    def prompt():
        return jsonify(json.loads(client.get("bench:bare")))

    @app.get("/readyz")
    def ready():
        return {"status": "ready"}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(port, method, path, body=None, headers=None, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None,
                     {"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def wait_ready(port, timeout=600.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if http_json(port, "GET", "/readyz", timeout=5)[0] == 200:
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not ready after {timeout}s")


class Stack:
    """Two Gunicorn instances (repo gunicorn.conf.py) and Nginx (rendered repo nginx.conf)."""

    def __init__(self, workdir: Path, env: dict, app: str | None = None, instances: int = 2):
        self.dir = workdir
        self.env = env
        self.app = app
        self.instances = instances
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []

    def start_instance(self, port: int) -> subprocess.Popen:
        cmd = [str(GUNICORN), "-c", str(REPO / "deploy/gunicorn.conf.py"), "--chdir", str(REPO)]
        if self.app:
            cmd += ["--pythonpath", str(REPO / "bench"), self.app]
        env = self.env | {"HEADLINE_BIND": f"127.0.0.1:{port}",
                          "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(dir=self.dir)}
        log = open(self.dir / f"api-{port}.log", "ab")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
        self.procs.append(proc)
        return proc

    def __enter__(self):
        ports = [free_port() for _ in range(self.instances)]
        for p in ports:
            self.start_instance(p)
        for p in ports:
            wait_ready(p)
        nginx_dir = self.dir / f"nginx-{self.port}"
        args = [str(PY), str(REPO / "deploy/nginx/render.py"), "--listen", f"127.0.0.1:{self.port}",
                "--state-dir", str(nginx_dir), "--output", str(nginx_dir / "nginx.conf")]
        for p in ports:
            args += ["--upstream", f"127.0.0.1:{p}"]
        subprocess.run(args, check=True)
        subprocess.run([NGINX, "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf"),
                        "-e", str(nginx_dir / "error.log")], check=True)
        self.nginx_pid = nginx_dir / "nginx.pid"
        wait_ready(self.port, 60)
        return self

    def __exit__(self, *exc):
        if self.nginx_pid.exists():
            os.kill(int(self.nginx_pid.read_text()), signal.SIGQUIT)
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def load(port, make_request, total, concurrency, max_seconds=120.0):
    """``total`` requests over ``concurrency`` keep-alive connections; returns (rps, p50, p99, errors)."""
    latencies: list[float] = []
    errors = [0]
    counter = iter(range(total))
    lock = threading.Lock()
    deadline = time.perf_counter() + max_seconds

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            path, body, headers = make_request(i)
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **headers})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt) if ok else None
                errors[0] += 0 if ok else 1
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    latencies.sort()
    p = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else (
        lambda q: float("nan"))
    return len(latencies) / elapsed, p(0.5), p(0.99), errors[0]


def write_config(path: Path, model: str, redis_url: str, batching: bool) -> Path:
    from config import ConfigDocument

    doc = ConfigDocument.read(REPO / "config/config.yml")
    doc.set("service.model", model)
    doc.set("service.cache.redis_url", redis_url)
    doc.set("service.batching.enabled", batching)
    doc.save(path)
    return path


def pick_model(arg: str | None) -> tuple[str, str]:
    from config import load_config

    if arg:
        return arg, f"{arg} (given)"
    if (REPO / "runs/latest").exists():
        return str(REPO / "runs/latest"), "runs/latest (newest fine-tuned run)"
    name = load_config().model.name
    return name, f"{name} (packaged base model; no run given or found)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="run folder or model.name value to serve")
    ap.add_argument("--redis-url", default=os.environ.get("HEADLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    ap.add_argument("--hit-requests", type=int, default=3000)
    ap.add_argument("--miss-requests", type=int, default=24, help="per concurrency level and mode")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--skip-miss", action="store_true")
    args = ap.parse_args()

    model, model_note = pick_model(args.run)
    print(f"model: {model_note}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="headline-bench-"))
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env |= {"HEADLINE_THREADS": "16", "HEADLINE_LOG_LEVEL": "warning", "BENCH_REDIS_URL": args.redis_url,
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []

    # 1. cache-hit path vs the bare app, same Nginx + Gunicorn settings.
    cfg = write_config(work / "batched.yml", model, args.redis_url, True)
    hit_body = {"prompt": "oil price", "max_len": args.max_new_tokens}
    with Stack(work, env | {"HEADLINE_CONFIG": str(cfg)}, app="serve:bare_app()") as bare:
        load(bare.port, lambda i: ("/prompt", hit_body, {}), 200, 16)  # warm connections
        bare_rps, bare_p50, bare_p99, bare_err = load(bare.port, lambda i: ("/prompt", hit_body, {}),
                                                      args.hit_requests, 16)
    with Stack(work, env | {"HEADLINE_CONFIG": str(cfg)}) as stack:
        http_json(stack.port, "POST", "/prompt", hit_body)  # fill the cache
        load(stack.port, lambda i: ("/prompt", hit_body, {}), 200, 16)
        rps, p50, p99, err = load(stack.port, lambda i: ("/prompt", hit_body, {}), args.hit_requests, 16)
    rows.append(("Cache hit, POST /prompt, 16 conns", f"{rps:.0f} req/s", f"{p50:.1f} / {p99:.1f} ms",
                 f"bare Flask + Redis GET: {bare_rps:.0f} req/s, {bare_p50:.1f} / {bare_p99:.1f} ms",
                 f"{rps / bare_rps:.0%} (target >= 80%)", err + bare_err))

    # 2. cache-miss generation, batching on vs off, through Nginx.
    if not args.skip_miss:
        results = {}
        for batching in (True, False):
            cfg = write_config(work / f"miss-{batching}.yml", model, args.redis_url, batching)
            with Stack(work, env | {"HEADLINE_CONFIG": str(cfg)}) as stack:
                for conc in (1, 8):
                    def req(i, b=batching, c=conc):
                        return ("/v1/headlines", {"theme": f"market news {b} {c} {i}",
                                                  "max_new_tokens": args.max_new_tokens},
                                {"Cache-Control": "no-cache"})
                    n = max(conc * 3, args.miss_requests if conc > 1 else args.miss_requests // 3)
                    results[batching, conc] = load(stack.port, req, n, conc, max_seconds=240)
                    print(f"miss batching={batching} conc={conc}: {results[batching, conc]}", flush=True)
        for conc in (1, 8):
            on, off = results[True, conc], results[False, conc]
            rows.append((f"Cache miss, {args.max_new_tokens} new tokens, concurrency {conc}",
                         f"{on[0]:.2f} headlines/s", f"{on[1]:.0f} / {on[2]:.0f} ms",
                         f"no batching: {off[0]:.2f} headlines/s, {off[1]:.0f} / {off[2]:.0f} ms",
                         f"{on[0] / off[0]:.1f}x" + (" (target >= 3x)" if conc == 8 else ""), on[3] + off[3]))

    # 3. cold start of one worker: process start to /readyz green.
    cfg = write_config(work / "cold.yml", model, args.redis_url, True)
    port = free_port()
    stack = Stack(work, env | {"HEADLINE_CONFIG": str(cfg)})
    t0 = time.perf_counter()
    proc = stack.start_instance(port)
    try:
        cold = wait_ready(port)
        cold = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)
    rows.append(("Worker cold start (process start to /readyz 200)", f"{cold:.1f} s", "", "", "target <= 10 s", 0))

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"\nMachine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}; model: {model_note}; "
          "2 Gunicorn instances x 1 gthread worker, Nginx, Redis, loopback.\n")
    print("| Measure | Result | p50 / p99 | Baseline (same run) | Ratio | Failed |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
