"""Load and faults through Nginx + two Gunicorn instances + Redis: a shortened bench/reliability.py.

Slow (about two minutes): steady load at 80% of the measured cache-hit capacity, then kill -9 of
one instance, a Redis restart and a SIGHUP reload onto a new run under the same load, then a
training run killed mid-epoch and resumed. Loopback only, every process ours.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                       reason="nginx not installed"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]


@pytest.mark.timeout(420)
def test_load_and_faults(tmp_path):
    import reliability

    report = reliability.run_all(tmp_path, steady_s=15, fault_s=8, train=True, log=print)
    results = {r["scenario"]: r for r in report["results"]}
    print(reliability.markdown(report))
    for r in report["results"]:
        assert r["ok"], r
        assert r["failed"] == 0 and r["errors_5xx"] == 0, r
    steady = results["steady load, 80% of capacity"]
    assert steady["sent"] > 0 and steady["p99_ms"] > 0
    reload = results["SIGHUP reload onto a new run"]
    assert reload["extra"]["versions_after"] == ["reliab-v2"]
    train = results["train killed (SIGKILL) mid-epoch, then --resume"]
    extra = train["extra"]
    assert extra["first_step_after_resume"] == extra["checkpoint"] + 1 and extra["last_step"] == 24
    assert extra["killed_at_step"] % extra["steps_per_epoch"] != 0   # really mid-epoch
