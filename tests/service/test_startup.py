"""service/startup.py: a worker starts with the cyclic collector off, then freezes what the start
made (later collections skip it) and switches the collector back on.

Each check runs in a process of its own: gc.freeze would otherwise freeze this test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deploy" / "gunicorn.conf.py"


def run(code: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "HEADLINE_STARTUP_GC"} | env
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=environ,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# A start in miniature: long-lived objects, and garbage held in a reference cycle (as the
# libraries' imports leave some), which only the cyclic collector frees.
START = """
    import gc, json, weakref

    class Node:
        pass

    def start():
        kept = [Node() for _ in range(50000)]
        a, b = Node(), Node()
        a.other, b.other = b, a
        return kept, weakref.ref(a)
"""


def test_quiet_start_freezes_the_start_and_collects_what_serving_makes():
    result = run(START + """
    from service import startup

    with startup.quiet_start():
        off_during = not gc.isenabled()
        kept, cycle = start()
    enabled_after, frozen = gc.isenabled(), gc.get_freeze_count()
    gc.collect()
    start_cycle_kept = cycle() is not None  # frozen with the rest: never scanned again
    kept_later, later = start()  # what serving makes is collected as before
    gc.collect()
    print(json.dumps({"off_during": off_during, "enabled_after": enabled_after, "frozen": frozen,
                      "start_cycle_kept": start_cycle_kept, "later_cycle_freed": later() is None}))
    """)
    assert result["off_during"] and result["enabled_after"]
    assert result["frozen"] >= 50000  # what the start made and kept is out of later collections
    assert result["start_cycle_kept"]
    assert result["later_cycle_freed"]


def test_startup_gc_on_leaves_the_collector_alone():
    result = run(START + """
    from service import startup

    with startup.quiet_start():
        on_during = gc.isenabled()
        kept, cycle = start()
    print(json.dumps({"on_during": on_during, "frozen": gc.get_freeze_count(),
                      "enabled_after": gc.isenabled()}))
    """, HEADLINE_STARTUP_GC="on")
    assert result == {"on_during": True, "frozen": 0, "enabled_after": True}


def test_a_collector_switched_off_by_the_host_stays_off():
    result = run(START + """
    from service import startup

    gc.disable()
    with startup.quiet_start():
        start()
    print(json.dumps({"enabled_after": gc.isenabled(), "frozen": gc.get_freeze_count()}))
    """)
    assert result == {"enabled_after": False, "frozen": 0}


def test_a_bad_value_names_the_variable():
    from service import startup

    with pytest.raises(ValueError, match="HEADLINE_STARTUP_GC: 'maybe'"):
        startup.wanted({"HEADLINE_STARTUP_GC": "maybe"})


def test_gunicorn_hooks_run_the_quiet_start_around_the_workers_load():
    """post_fork switches the collector off in the new worker; post_worker_init (after the app and
    its model are loaded) freezes what was made and switches it back on. The conf finds service/ itself,
    run from elsewhere."""
    result = run(START + f"""
    import runpy, types

    conf = runpy.run_path({str(CONF)!r})
    worker = types.SimpleNamespace()
    conf["post_fork"](None, worker)
    off_after_fork = not gc.isenabled()
    kept, cycle = start()
    conf["post_worker_init"](worker)
    print(json.dumps({{"off_after_fork": off_after_fork, "enabled_after": gc.isenabled(),
                      "frozen": gc.get_freeze_count() >= 50000}}))
    """)
    assert result == {"off_after_fork": True, "enabled_after": True, "frozen": True}


def test_gunicorn_refuses_a_bad_startup_gc_value():
    env = dict(os.environ) | {"HEADLINE_STARTUP_GC": "sometimes"}
    gunicorn = Path(sys.executable).parent / "gunicorn"
    out = subprocess.run([str(gunicorn), "-c", str(CONF), "--check-config", "service:create_app()"],
                         cwd="/", env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "HEADLINE_STARTUP_GC: 'sometimes'" in out.stdout + out.stderr
