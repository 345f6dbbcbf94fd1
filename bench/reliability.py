"""Load and fault benchmark of the serving stack (issue 6); writes RELIABILITY.md.

    python bench/reliability.py [--steady 60] [--fault 30] [--write RELIABILITY.md] [--json FILE]

Everything runs on loopback, on free ports, in a temporary folder, and stops after itself:
a private redis-server, two Gunicorn instances (deploy/gunicorn.conf.py) and Nginx
(deploy/nginx/nginx.conf rendered by render.py) in front. The model is the tiny random GPT-2
of tests/tiny.py saved as two finished runs (v1, v2) with runs/latest pointing at v1: the
cache-hit path does not depend on the model's size, and a reload takes seconds.

1. Capacity: closed-loop cache hits through Nginx, 16 connections, 4 s.
2. Steady: open-loop load at 80 % of that capacity for --steady seconds.
3. During the same load, one fault per phase (--fault seconds each):
   kill -9 one Gunicorn instance (a supervisor restarts it), restart Redis, and a graceful
   reload (SIGHUP, one instance after the other) after runs/latest moved to v2.
4. `headline train` killed with SIGKILL mid-epoch, then `headline train --resume`.

A request fails when it gets no answer or a status other than 200. p99 is of the latency
from when the request was due (open loop) to its full response. Recovery: kill = until the restarted instance is ready; Redis =
until the first cache HIT after Redis is back; reload = until every answer comes from v2;
training = wall time of the resumed run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu_name  # noqa: E402
from stack import Gunicorn, Nginx, Redis, http_get  # noqa: E402

THEMES = [f"market theme {i}" for i in range(50)]
CONNECTIONS = 16


# -- load generation ---------------------------------------------------------------------

@dataclass
class Sample:
    t: float            # when it was due (open loop) or sent, seconds since the phase started
    latency: float      # due -> answered
    status: int         # 0 = no answer (connection error, timeout)
    sent: float = 0.0   # when it was really sent
    service: float = 0.0  # sent -> answered
    version: str = ""
    cache: str = ""
    error: str = ""     # why a request failed: the exception, or the status and a bit of the body


@dataclass
class Result:
    scenario: str
    sent: int = 0
    failed: int = 0
    errors_5xx: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rate: float = 0.0
    recovery_s: float | None = None
    ok: bool = True
    notes: str = ""
    extra: dict = field(default_factory=dict)


def _body(i: int) -> bytes:
    return json.dumps({"theme": THEMES[i % len(THEMES)], "max_new_tokens": 8}).encode()


class LoadGenerator:
    """CONNECTIONS threads with keep-alive connections to Nginx; open loop at ``rate`` req/s
    (``rate`` None = closed loop, as fast as answers come)."""

    def __init__(self, port: int, rate: float | None, duration: float):
        self.port, self.rate, self.duration = port, rate, duration
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self.t0 = 0.0

    def _worker(self, k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i, local = 0, []
        while True:
            if self.rate:
                due = self.t0 + (i * CONNECTIONS + k) / self.rate
                if due - self.t0 >= self.duration:
                    break
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            elif time.perf_counter() - self.t0 >= self.duration:
                break
            # Open loop: latency counts from when the request was due, so a stalled client or
            # server cannot hide its queueing (coordinated omission).
            sent = time.perf_counter()
            start = due if self.rate else sent
            status, version, cache, error = 0, "", "", ""
            try:
                conn.request("POST", "/v1/headlines", body=_body(i * CONNECTIONS + k),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                status, cache = resp.status, resp.getheader("X-Cache", "")
                if status == 200:
                    version = json.loads(data)["model"]["version"]
                else:
                    error = f"HTTP {status}: {data[:120]!r}"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:160]
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            done = time.perf_counter()
            local.append(Sample(t=start - self.t0, latency=done - start, status=status, version=version,
                                cache=cache, sent=sent - self.t0, service=done - sent, error=error))
            i += 1
        conn.close()
        with self._lock:
            self.samples.extend(local)

    def start(self) -> LoadGenerator:
        self.t0 = time.perf_counter()
        self.threads = [threading.Thread(target=self._worker, args=(k,), daemon=True) for k in range(CONNECTIONS)]
        for t in self.threads:
            t.start()
        return self

    def join(self) -> list[Sample]:
        for t in self.threads:
            t.join(self.duration + 60)
        self.samples.sort(key=lambda s: s.t)
        return self.samples

    def now(self) -> float:
        return time.perf_counter() - self.t0


def summarize(name: str, samples: list[Sample], duration: float) -> Result:
    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else 0.0

    failed = sum(1 for s in samples if s.status != 200)
    result = Result(name, sent=len(samples), failed=failed, errors_5xx=sum(1 for s in samples if s.status >= 500),
                    p50_ms=pct([s.latency for s in samples], 0.50), p99_ms=pct([s.latency for s in samples], 0.99),
                    rate=round(len(samples) / duration, 1), ok=failed == 0)
    result.extra["p99_service_ms"] = pct([s.service for s in samples], 0.99)
    errors = Counter(s.error for s in samples if s.status != 200)
    if errors:
        result.extra["failures"] = [f"{n} x {e} (at {min(s.sent for s in samples if s.error == e):.1f} s)"
                                    for e, n in errors.most_common(5)]
    return result


# -- the stack -----------------------------------------------------------------------------

def make_runs(work: Path) -> tuple[Path, Path, Path]:
    """runs/<v1>, runs/<v2> (finished runs of two tiny models) and runs/latest -> v1."""
    from tests.tiny import make_tiny_model
    from trainer import runs

    out = work / "runs"
    made = []
    for seed, name in ((0, "20260101-000000-v1"), (1, "20260101-000001-v2")):
        run_dir = out / name
        make_tiny_model(run_dir / "model", seed=seed)
        (run_dir / "run.json").write_text(json.dumps({
            "run_id": name, "name": name[-2:], "status": "finished", "version": f"reliab-{name[-2:]}",
            "base_model": "tiny"}))
        made.append(run_dir)
    runs.update_latest(made[0])
    return out, made[0], made[1]


def write_config(work: Path, redis_url: str, model_ref: Path) -> Path:
    from config import ConfigDocument

    doc = ConfigDocument.read()
    for key, value in {"service.model": str(model_ref), "service.cache.redis_url": redis_url,
                       "service.auth.enabled": False, "service.torch_threads": 1,
                       "train.output_dir": str(work / "runs")}.items():
        doc.set(key, value)
    return doc.save(work / "config.yml")


class Stack:
    def __init__(self, work: Path):
        self.work = work
        self.redis = Redis(work / "redis").start()
        self.runs, self.v1, self.v2 = make_runs(work)
        self.config = write_config(work, self.redis.url, self.runs / "latest")
        self.env = {"HEADLINE_CONFIG": str(self.config), "HEADLINE_WORKERS": "1", "HEADLINE_THREADS": "16",
                    "HEADLINE_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                    "HEADLINE_MAX_REQUESTS": "0"}
        self.apis = [Gunicorn(work / "api", self.env) for _ in range(2)]
        for api in self.apis:
            api.start()
        for api in self.apis:
            api.wait_ready(timeout=180)
        self.nginx = Nginx(work / "nginx", [f"127.0.0.1:{a.port}" for a in self.apis]).start()

    def restart_api(self, index: int) -> Gunicorn:
        old = self.apis[index]
        old.stop()
        new = Gunicorn(self.work / "api", self.env, port=old.port).start()
        self.apis[index] = new
        return new

    def close(self) -> None:
        for part in (self.nginx, *self.apis, self.redis):
            try:
                part.stop()
            except Exception as exc:  # noqa: BLE001 - stop the rest anyway
                print(f"reliability: stopping {part}: {exc}", file=sys.stderr)


def warm_cache(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(len(THEMES)):
        conn.request("POST", "/v1/headlines", body=_body(i), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"warm-up request failed: {resp.status}")
    conn.close()


# -- scenarios -------------------------------------------------------------------------------

def measure_capacity(stack: Stack, seconds: float = 4.0) -> Result:
    warm_cache(stack.nginx.port)
    samples = LoadGenerator(stack.nginx.port, None, seconds).start().join()
    result = summarize("capacity (closed loop, cache hits)", samples, seconds)
    result.notes = f"{CONNECTIONS} connections"
    return result


def steady(stack: Stack, rate: float, seconds: float) -> Result:
    samples = LoadGenerator(stack.nginx.port, rate, seconds).start().join()
    result = summarize("steady load, 80% of capacity", samples, seconds)
    result.extra["hits"] = sum(1 for s in samples if s.cache == "HIT")
    return result


def kill_instance(stack: Stack, rate: float, seconds: float) -> Result:
    load = LoadGenerator(stack.nginx.port, rate, seconds).start()
    time.sleep(seconds * 0.3)
    killed_at = load.now()
    stack.apis[0].kill()                       # SIGKILL master and workers: a crash
    time.sleep(min(3.0, seconds * 0.2))        # the supervisor notices...
    new = stack.restart_api(0)                 # ...and starts it again on the same port
    new.wait_ready(timeout=120)
    back_at = load.now()
    result = summarize("kill -9 one Gunicorn instance", load.join(), seconds)
    result.recovery_s = round(back_at - killed_at, 1)
    result.notes = "Nginx retries on the other instance (each response leaves Gunicorn in one send, so a kill never strands half an answer); recovery = restarted instance ready"
    return result


def restart_redis(stack: Stack, rate: float, seconds: float) -> Result:
    load = LoadGenerator(stack.nginx.port, rate, seconds).start()
    time.sleep(seconds * 0.3)
    stack.redis.stop()
    time.sleep(min(2.0, seconds * 0.15))
    stack.redis.start()
    back_at = load.now()
    samples = load.join()
    result = summarize("restart Redis", samples, seconds)
    first_hit = next((s.sent + s.service for s in sorted(samples, key=lambda s: s.sent)
                      if s.sent > back_at and s.cache == "HIT"), None)
    result.recovery_s = round(first_hit - back_at, 1) if first_hit is not None else None
    result.ok = result.errors_5xx == 0 and result.failed == 0
    result.notes = "served uncached while Redis is away; recovery = first cache HIT after it is back"
    return result


def reload_new_model(stack: Stack, rate: float, seconds: float) -> Result:
    from trainer import runs

    load = LoadGenerator(stack.nginx.port, rate, seconds).start()
    time.sleep(seconds * 0.2)
    runs.update_latest(stack.v2)               # service.model is runs/latest
    hup_at = load.now()
    for api in stack.apis:                     # one instance after the other
        api.signal(signal.SIGHUP)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, body = http_get(f"http://127.0.0.1:{api.port}/v1/models", timeout=2)
            if status == 200 and json.loads(body)["model"]["version"] == "reliab-v2":
                break
            time.sleep(0.2)
    samples = load.join()
    result = summarize("SIGHUP reload onto a new run", samples, seconds)
    served = [s for s in samples if s.status == 200]
    last_old = max((s.sent + s.service for s in served if s.version == "reliab-v1"), default=hup_at)
    tail = [s for s in served if s.sent > last_old]
    result.recovery_s = round(last_old - hup_at, 1)
    result.ok = result.failed == 0 and bool(tail) and all(s.version == "reliab-v2" for s in tail)
    result.extra["versions_after"] = sorted({s.version for s in tail})
    result.notes = "recovery = until every answer is from the new version"
    return result


def train_kill_resume(work: Path, model_dir: Path) -> Result:
    """`headline train` killed with SIGKILL mid-epoch; `--resume` continues from the checkpoint."""
    out = work / "train-runs"
    headline = str(Path(sys.executable).parent / "headline")
    sets = [f"model.name={model_dir}", f"data.source={ROOT / 'data' / 'sample_news.jsonl'}",
            "data.max_examples=20", f"train.output_dir={out}", "train.batch_size=4", "train.max_steps=24",
            "train.warmup_steps=1", "train.eval_steps=4", "train.save_steps=4", "train.logging_steps=1",
            "train.num_threads=1", "train.early_stopping_patience=null", "train.learning_rate=1e-3"]
    args = [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    first, second = work / "train1.jsonl", work / "train2.jsonl"
    proc = subprocess.Popen([headline, "train", *args, "--no-eval", "--progress-json", str(first)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    killed_step, checkpoint_step, per_epoch = None, None, None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        events = _events(first)
        start = next((e for e in events if e["event"] == "start"), None)
        if start and per_epoch is None:
            per_epoch = max(1, round(start["total_steps"] / max(start["epochs"], 1e-9)))
        ckpts = [e["step"] for e in events if e["event"] == "checkpoint"]
        steps = [e["step"] for e in events if e["event"] == "step"]
        # Kill after the second checkpoint, in the middle of an epoch (not on its boundary).
        if len(ckpts) >= 2 and steps and steps[-1] > ckpts[-1] and per_epoch and steps[-1] % per_epoch:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_step, checkpoint_step = steps[-1], ckpts[-1]
            break
        time.sleep(0.05)
    proc.wait(30)
    result = Result("train killed (SIGKILL) mid-epoch, then --resume")
    if killed_step is None:
        result.ok, result.notes = False, "training ended before it could be killed mid-epoch"
        return result
    t0 = time.perf_counter()
    resumed = subprocess.run([headline, "train", *args, "--resume", "--no-eval", "--progress-json", str(second)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    result.recovery_s = round(time.perf_counter() - t0, 1)
    events = _events(second)
    steps = [e["step"] for e in events if e["event"] == "step"]
    resumed_from = next((e["message"] for e in events if e["event"] == "log" and "resuming" in e["message"]), "")
    done = any(e["event"] == "done" for e in events)
    result.ok = (resumed.returncode == 0 and done and f"checkpoint-{checkpoint_step}" in resumed_from
                 and bool(steps) and min(steps) > checkpoint_step and max(steps) == 24)
    result.extra = {"killed_at_step": killed_step, "checkpoint": checkpoint_step,
                    "first_step_after_resume": min(steps) if steps else None, "last_step": max(steps, default=None),
                    "steps_per_epoch": per_epoch, "returncode": resumed.returncode}
    result.notes = (f"killed at step {killed_step} (epoch of {per_epoch} steps), resumed from checkpoint-"
                    f"{checkpoint_step}, finished at step {max(steps, default='?')}; recovery = resumed run's time")
    if resumed.returncode != 0:
        result.notes += f"; resume failed: {resumed.stderr[-300:]}"
    return result


def _events(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # the line being written
    return out


# -- running and reporting ---------------------------------------------------------------------

def run_all(work: Path, *, steady_s: float, fault_s: float, train: bool = True, log=print) -> dict:
    t_start = time.time()
    stack = Stack(work)
    results: list[Result] = []
    try:
        cap = measure_capacity(stack)
        log(f"capacity: {cap.rate} req/s (p99 {cap.p99_ms} ms)")
        rate = round(cap.rate * 0.8, 1)
        results.append(cap)
        for name, fn, seconds in (("steady", steady, steady_s), ("kill", kill_instance, fault_s),
                                  ("redis", restart_redis, fault_s), ("reload", reload_new_model, fault_s)):
            result = fn(stack, rate, seconds)
            log(f"{name}: sent {result.sent}, failed {result.failed}, p99 {result.p99_ms} ms, "
                f"recovery {result.recovery_s} s, ok {result.ok}")
            results.append(result)
    finally:
        stack.close()
    if train:
        result = train_kill_resume(work, stack.v1 / "model")
        log(f"train: ok {result.ok}; {result.notes}")
        results.append(result)
    return {"results": [asdict(r) for r in results], "rate": rate, "steady_s": steady_s, "fault_s": fault_s,
            "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t_start)),
            "duration_s": round(time.time() - t_start)}


def machine() -> dict:
    cpu = cpu_name()
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory": mem, "os": platform.platform(),
            "python": platform.python_version(), "nginx": nginx,
            "redis": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
            .removeprefix("v=")}


def markdown(report: dict) -> str:
    m = report["machine"]
    rows = []
    for r in report["results"]:
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']} s"
        sent = str(r["sent"]) if r["sent"] else "-"
        failed = f"{r['failed']} ({r['errors_5xx']} 5xx)" if r["sent"] else ("0" if r["ok"] else "failed")
        p99 = f"{r['p99_ms']} ms" if r["sent"] else "-"
        p99s = f"{r['extra'].get('p99_service_ms', '-')} ms" if r["sent"] else "-"
        rate = f"{r['rate']}" if r["sent"] else "-"
        notes = "; ".join([r["notes"], *r["extra"].get("failures", [])]).replace("|", "/")
        rows.append(f"| {r['scenario']} | {sent} | {rate} | {failed} | {p99} | {p99s} | {rec} | "
                    f"{'yes' if r['ok'] else '**NO**'} | {notes} |")
    return f"""# Reliability

Load and fault figures of the serving stack, regenerated by one command:

    python bench/reliability.py --write RELIABILITY.md      (make reliability)

Nginx (deploy/nginx/nginx.conf) in front of two Gunicorn instances (deploy/gunicorn.conf.py, 1 worker x 16
threads each), a private Redis, all on loopback. The model is the tiny random GPT-2 of the tests saved as two
finished runs: the cache-hit path does not depend on model size. Load: {CONNECTIONS} keep-alive connections,
open loop at 80% of the measured cache-hit capacity ({report['rate']} req/s), `POST /v1/headlines` over 50
cached themes; steady phase {report['steady_s']:.0f} s, each fault phase {report['fault_s']:.0f} s.
A request *fails* when it gets no answer or a status other than 200; *p99 (from due)* counts from when a
request was due to be sent, so stalls of the server *or of the load generator* (Python, on the same cores)
are not hidden; *p99 (from sent)* is the round trip of the requests as actually sent.

| Scenario | Requests sent | req/s | Failed | p99 (from due) | p99 (from sent) | Recovery | Pass | Notes |
|---|---:|---:|---:|---:|---:|---:|:---:|---|
{chr(10).join(rows)}

Machine: {m['cpu']}, {m['cores']} cores available, {m['memory']} RAM; {m['os']}; Python {m['python']},
nginx {m['nginx']}, redis {m['redis']}. Run {report['started']}, {report['duration_s']} s in all. The
load generator runs on the same cores as the stack, on a VM whose cores may be shared, so latencies are indicative.

How each fault is made: *kill*: SIGKILL to the Gunicorn master and its worker (its process group), then a
restart on the same port, as a supervisor would; *Redis*: the private redis-server stopped (SIGTERM), started
again 2 s later, empty; *reload*: `runs/latest` re-pointed to the v2 run, then SIGHUP to each instance in
turn, waiting for its /v1/models to say v2; *training*: `headline train` on the tiny model killed with
SIGKILL in the middle of an epoch after its second checkpoint, then `headline train --resume`.
"""


SECURITY_HEADING = "## What keeps it safe"


def with_kept_sections(figures: str, path: Path | None) -> str:
    """The new figures plus the hand-written sections of the old report (from SECURITY_HEADING on)."""
    try:
        old = path.read_text() if path else ""
    except OSError:
        old = ""
    start = old.find(SECURITY_HEADING)
    return figures + ("\n" + old[start:] if start >= 0 else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of steady load")
    parser.add_argument("--fault", type=float, default=30.0, help="seconds of load in each fault phase")
    parser.add_argument("--no-train", action="store_true", help="skip the training kill/resume scenario")
    parser.add_argument("--write", type=Path, help="write the markdown report here (RELIABILITY.md)")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument("--from-json", type=Path, help="only re-render the report of an earlier --json")
    args = parser.parse_args(argv)
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        text = with_kept_sections(markdown(report), args.write)
        (args.write.write_text if args.write else print)(text)
        return 0 if all(r["ok"] for r in report["results"]) else 1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="headline-reliability-"))
    try:
        report = run_all(work, steady_s=args.steady, fault_s=args.fault, train=not args.no_train,
                         log=lambda msg: print(f"reliability: {msg}", flush=True))
    finally:
        if args.keep:
            print(f"reliability: logs in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = with_kept_sections(markdown(report), args.write)
    if args.write:
        args.write.write_text(text)
        print(f"reliability: wrote {args.write}")
    else:
        print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if all(r["ok"] for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
