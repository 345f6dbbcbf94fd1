"""Loopback helpers for the service and security tests: the ones bench/stack.py defines.

bench/stack.py starts the serving topology for the benchmarks and the TLS and fault
tests; its port helpers serve the other tests too, so there is one copy of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from stack import free_port, wait_port  # noqa: E402

__all__ = ["free_port", "wait_port"]
