"""A worker's start without the cyclic garbage collector's repeated full passes.

Starting a worker creates about 450,000 objects that live as long as it does (torch,
transformers, Flask and the model's modules), and almost no garbage in cycles. With the
collector on, CPython runs a full collection each time the long-lived objects have grown
by a quarter: 8 of them during one start, each scanning everything made so far. On the
2-core Zen 3 that is 1.3-1.5 s of full collections (1.6-1.8 s of collection in all) in a
9-10 s start. ``begin`` switches the collector off for the start; ``end`` moves every object
into the permanent generation (``gc.freeze``), so that later collections scan only what
serving creates, and switches the collector back on.

What the start left in reference cycles is frozen with the rest instead of freed: 15,000
small objects, about 10 MB (closures, tuples and frames that the libraries' imports leave).
Freeing them would take a full collection, 0.6 s here. This is the pattern the ``gc`` docs
give for servers that fork. (The weights' float32 copies that loading used to leave in such
a cycle, half a GB, are dropped where they are used: ``cpu_linear.install_float16``.)

Gunicorn calls them from ``deploy/gunicorn.conf.py`` (``post_fork``, then
``post_worker_init`` once the app and its model are loaded); the Lambda handler wraps
``build_app`` in ``quiet_start``. ``HEADLINE_STARTUP_GC=on`` leaves the collector as
it is (the benchmark's baseline).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager


def wanted(environ=os.environ) -> bool:
    """Whether starts run with the collector off: ``HEADLINE_STARTUP_GC=off``, the default."""
    value = environ.get("HEADLINE_STARTUP_GC", "off").strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"HEADLINE_STARTUP_GC: {value!r} is neither 'off' (the default) nor 'on'")
    return value == "off"


def begin() -> bool:
    """Switch the collector off for the start; False (nothing done) where it is already off
    or ``HEADLINE_STARTUP_GC=on``."""
    if not wanted() or not gc.isenabled():
        return False
    gc.disable()
    return True


def end(begun: bool) -> None:
    """After ``begin`` (``begun``: what it returned): freeze what the start made, collector back on."""
    if not begun or gc.isenabled():
        return
    gc.freeze()
    gc.enable()


@contextmanager
def quiet_start() -> Iterator[None]:
    begun = begin()
    try:
        yield
    finally:
        end(begun)
