"""bench/hit_cpu.py's harness: both apps answer its request, ours from the cache (no valgrind here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "hit_cpu.py"


@pytest.mark.parametrize("app", ["bare", "api", "api-v1", "api-keys"])
def test_harness_answers_200_and_the_api_a_hit(app, redis_url):
    # The child exits non-zero unless the last answer is a 200 and, for our app, an X-Cache HIT.
    proc = subprocess.run([sys.executable, str(SCRIPT), "--child", app, "--requests", "3", "--redis-url", redis_url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
