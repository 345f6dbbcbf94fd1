"""torch's thread count for a block of a test: the service runs on one thread, and some results
(attention runs, which float16 kernel serves) depend on it."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def torch_threads(n: int):
    """torch on ``n`` threads inside the block; as it was before, after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
