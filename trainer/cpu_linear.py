"""Matrix products for decoding on CPU: what a decoding step's time goes to.

Two ways to make a step of a few rows cost little more than a step of one:
float16 weights (``install_float16``, the service's default) and a blocked
float32 product (``install``, used when the weights stay float32).

Float16 weights: the step reads half the bytes, and fbgemm's fp16 kernels
(activations stay float32, each row is computed on its own) keep 1-8 rows close
to the cost of one. On this project's 2-core AMD EPYC (AVX2, one thread, 80
different 1536 x 576 matrices, microseconds per matrix):

    rows        1     4     8     12    16
    float32     410   800   870   1020  1070
    float16     175   210   330   385   470

Outputs differ from float32 by about 2e-4 relative per product (weights
rounded to float16); the serving precision is ``service.weights``.

Blocked float32:

A decoding step multiplies a few rows (one per sequence of the batch) by every
weight matrix of the model, so on a CPU its cost is reading ~0.5 GB of fp32
weights from memory. MKL's sgemm streams the weights once for up to 3 rows, but
from 4 to 15 rows it makes one pass per 3 rows. Measured on this project's
reference Xeon (one thread, 80 different 1536 x 576 matrices so that they come
from DRAM, microseconds per matrix):

    rows        1-3   4-6   7-9   10-12  13-15  16
    F.linear    400   700   870   1040   1180   770
    blocked     420   460   540    620    700   1750

(Measured on an Intel Xeon with AVX-512; on the AMD EPYC above MKL gains little from
blocking and the calibration below leaves it off.) "Blocked" cuts the weight into blocks
of 64 output rows and multiplies every input row by each block in one batched product
(``torch.bmm``), so each block is read from memory once and used by all rows while it
sits in cache. That makes a batch of 4-15 decoding rows, and the prefill of a short
prompt, cost little more than one row, which is what continuous batching in the service
relies on.

``install(model)`` times both ways on the model's own weights when it is loaded
and switches its ``nn.Linear`` layers to the blocked product for 4-15 rows only
if it is clearly faster on this machine; everything else (1-3 rows, 16 and more,
autograd, other devices and dtypes) goes to ``F.linear`` unchanged. Results
equal ``F.linear``'s up to float rounding.
"""

from __future__ import annotations

import logging
import os
import time
import types

log = logging.getLogger(__name__)

BLOCK = 64  # output rows per block: 64 x 576 fp32 = 147 KB, well inside L2
MIN_ROWS, MAX_ROWS = 4, 15
_DECIDED: dict[tuple, bool] = {}  # (torch threads, weight shapes) -> blocked is faster; see install()


def blocked_linear(x, weight, bias=None):
    """``F.linear(x, weight, bias)`` computed block by block over the output features."""
    import torch

    out_features, in_features = weight.shape
    rows = x.numel() // in_features
    blocks = out_features // BLOCK
    flat = x.reshape(1, rows, in_features).expand(blocks, -1, -1)
    y = torch.bmm(flat, weight.view(blocks, BLOCK, in_features).transpose(1, 2))  # (blocks, rows, BLOCK)
    y = y.transpose(0, 1).reshape(*x.shape[:-1], out_features)
    return y if bias is None else y + bias


def _forward(self, x):
    import torch
    import torch.nn.functional as F

    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if MIN_ROWS <= rows <= MAX_ROWS and not torch.is_grad_enabled() and x.dtype == self.weight.dtype:
        return blocked_linear(x, self.weight, self.bias)
    return F.linear(x, self.weight, self.bias)


def _cpu_float32_linears(model) -> dict:
    """``{name: module}`` of the model's plain ``nn.Linear`` layers with float32 weights on the CPU."""
    import torch

    return {name: m for name, m in model.named_modules()
            if type(m) is torch.nn.Linear and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32}


def _eligible(model) -> list:
    return [m for m in _cpu_float32_linears(model).values()
            if m.weight.is_contiguous() and m.out_features % BLOCK == 0]


def _time(fn, weights, x) -> float:
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for w in weights:
            fn(x, w)
        best = min(best, time.perf_counter() - start)
    return best


def calibrate(weights, rows=(4, 8, 12)) -> dict[int, tuple[float, float]]:
    """Seconds for one pass over ``weights`` (all of one input width) per row count:
    ``{rows: (F.linear, blocked)}``, best of two."""
    import torch
    import torch.nn.functional as F

    out = {}
    with torch.inference_mode():
        for n in rows:
            x = torch.randn(n, weights[0].shape[1])
            out[n] = (_time(F.linear, weights, x), _time(blocked_linear, weights, x))
    return out


def install(model, *, force: bool | None = None) -> bool:
    """Switch the model's eligible ``nn.Linear`` layers to ``blocked_linear`` for 4-15 rows.

    ``force=None`` measures first (about a second for a 135M model, once per process and
    architecture) and installs only
    where the blocked product is at least 10% faster for 4, 8 and 12 rows; True/False skip
    the measurement. Returns whether it was installed.
    """
    layers = _eligible(model)
    if not layers or force is False:
        return False
    if force is None:
        # The layers' matrices of the most common input width (for a decoder: the attention and
        # MLP inputs of every layer), far more than the cache holds, as in a decoding step.
        groups: dict[int, list] = {}
        for m in layers:
            if m.out_features < 16384:  # not the LM head
                groups.setdefault(m.in_features, []).append(m.weight)
        weights = max(groups.values(), key=lambda ws: sum(w.numel() for w in ws)) if groups else [layers[0].weight]
        # The answer depends on the machine, the shapes and the thread count, not on the weights:
        # a second model of the same architecture (eval loads the base model beside the run's)
        # reuses it instead of measuring again.
        import torch

        key = (torch.get_num_threads(), tuple(tuple(w.shape) for w in weights))
        faster = _DECIDED.get(key)
        if faster is None:
            timings = calibrate(weights)
            faster = _DECIDED[key] = all(blocked < 0.9 * plain for plain, blocked in timings.values())
            log.debug("blocked small-batch linear %s: %s", "on" if faster else "off", ", ".join(
                f"{n} rows {plain * 1e3:.1f} -> {blocked * 1e3:.1f} ms" for n, (plain, blocked) in timings.items()))
        if not faster:
            return False
    for module in layers:
        module.forward = types.MethodType(_forward, module)
    return True


def _forward_float16(self, x):
    import torch
    import torch.nn.functional as F

    if torch.is_grad_enabled():  # autograd needs the real parameter
        return F.linear(x, self.weight, self.bias)
    y = torch.ops.quantized.linear_dynamic_fp16(x.reshape(-1, x.shape[-1]), self._float16)
    return y.view(*x.shape[:-1], y.shape[-1])


def _pack_float16(weight, bias=None):
    import torch

    return torch.ops.quantized.linear_prepack_fp16(weight, bias)


def prepack_float16(folder) -> dict | None:
    """Start packing the 2-D weights of a model folder's safetensors files before the model exists.

    fbgemm converts element by element (about 2 s for a 135M model on one core). The op
    releases the GIL, so packing from the files on every core while the loading thread imports
    transformers (seconds, one core) takes it off a worker's cold start. Returns
    ``{tensor name: Future of (packed, weight)}`` for ``install_float16``, or None.
    """
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    # One core stays with the loading thread, whose imports are what this overlaps.
    pool = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 1) - 1), thread_name_prefix="fp16-pack")

    def pack(tensor):
        weight = tensor.float().contiguous()
        return _pack_float16(weight), weight

    futures = {}
    try:
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    if name.endswith(".weight") and len(handle.get_slice(name).get_shape()) == 2:
                        futures[name] = pool.submit(pack, handle.get_tensor(name))
    finally:
        pool.shutdown(wait=False)
    return futures


def install_float16(model, prepacked: dict | None = None) -> bool:
    """Serve the model's CPU ``nn.Linear`` layers from float16 copies of their weights.

    The float32 parameters stay (training, perplexity with autograd and the tied embedding
    use them); the copies add half the linear layers' size in memory. ``prepacked`` (from
    ``prepack_float16`` on the folder the model was loaded from) is used for every layer whose
    weight it holds unchanged; the rest are packed here, on every core (the op releases the
    GIL). Returns False, changing nothing, where fbgemm cannot run (a CPU without AVX2).
    """
    import torch

    layers = _cpu_float32_linears(model)
    if not layers:
        return False
    embedding = model.get_input_embeddings()
    embedding_name = next((n for n, m in model.named_modules() if m is embedding), None)

    def pack(item):
        name, m = item
        # A tied LM head shares the input embedding's weight: the files hold it under that name.
        tied = embedding is not None and m.weight is embedding.weight
        future = (prepacked or {}).get(f"{embedding_name}.weight" if tied else f"{name}.weight")
        if future is not None and m.bias is None:
            packed, weight = future.result()
            if weight.shape == m.weight.shape and torch.equal(weight, m.weight):
                return packed
        return _pack_float16(m.weight.detach(), None if m.bias is None else m.bias.detach())

    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="fp16-pack") as pool:
            packed = list(pool.map(pack, layers.items()))
    except RuntimeError as exc:  # no fbgemm on this CPU
        log.warning("float16 weights unavailable here (%s); serving float32", exc)
        return False
    for module, weights in zip(layers.values(), packed):
        module._float16 = weights
        module.forward = types.MethodType(_forward_float16, module)
    return True
