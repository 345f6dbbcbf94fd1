"""Matrix products for decoding on CPU: what a decoding step's time goes to.

Three ways to make a step of a few rows cost little more than a step of one:
float16 weights (``install_float16``, the service's default), int8 weights with
int8 activations (``install_int8``), and a blocked float32 product (``install``,
used when the weights stay float32). Float16 and int8 serve sibling layers that
read one input (q/k/v, gate/up: ``SHARED_INPUT``) with one stacked product.

Float16 weights: the step reads half the bytes, and float16 kernels
(activations stay float32, each row is computed on its own) keep 1-8 rows close
to the cost of one. fbgemm's, on this project's 2-core AMD EPYC (AVX2, one
thread, 80 different 1536 x 576 matrices, microseconds per matrix):

    rows        1     4     8     12    16
    float32     410   800   870   1020  1070
    float16     175   210   330   385   470

Where the service runs (one torch thread), ``trainer._f16`` (``trainer/_f16.c``,
built by setup.py) serves the float16 layers instead of fbgemm: it prefetches the
weights (into L2) ahead of its multiply-adds, so that reading them from memory and
multiplying them overlap, and sums every value in one order, so a row has the
same bits alone and batched. On AVX2 fbgemm's float16 kernel also takes at most 6
rows a pass over the weights, and its passes differ in how they round. On the
model's own layer shapes (one thread, milliseconds for the 120 products of one
step of the 30-layer model, LM head aside):

    rows                1     4     8     10    12    16    200
    Zen 4, fbgemm       10.9  15.0  23.7  27.6  32.6  41.1  426
    Zen 4, _f16, earlier AVX-512 loop (panels of 32, prefetching into L1)
                        10.3  12.6  19.0  22.5  26.7  36.1  431
    Zen 4, _f16, AVX2 loop prefetching into L1
                        10.2  13.6  22.6  26.1  28.4  37.1  403
    Zen 4, _f16 now, and the earlier AVX-512 loop in the same runs
                         9.3  10.4        20.6
                        10.3  13.0        22.9
    Zen 3, fbgemm       20.8  26.1        40.4
    Zen 3, _f16 (AVX2, before the prefetch)
                        16.3  23.0        33.6

Outputs differ from float32 by about 2e-4 relative per product (weights
rounded to float16); the serving precision is ``service.weights``.

Int8 (the same 80 matrices, on the 2-core AMD EPYC Zen 4 with AVX-512 VNNI; float16
there for comparison):

    rows        1     4     8     12    16    32
    float16     73    104   176   240   316   585
    int8        54    56    72    99    120   195

Int8 products cost about 1% relative error per row (more for a row with an outlier,
which sets the row's scale), and are exact integer sums: see "int8" below.

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

import functools
import logging
import os
import threading
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


PANEL = 16  # output features a panel of ``_Panels`` (the kernel's PANEL, both loops)


class _Panels:
    """A weight (and bias) packed for ``trainer._f16``: float16 panels of 16 output features, each
    stored k-major, zero past the last feature, read by both of the kernel's loops. Values beyond
    float16's range saturate, as in fbgemm's packing."""

    __slots__ = ("data", "bias", "out_features", "in_features", "avx512")

    def __init__(self, weight, bias=None, avx512: bool | None = None):
        """``avx512``: run the kernel's AVX-512 loop (default: where the CPU has it), else its AVX2
        loop; both give the same bits."""
        import torch

        n, k = weight.shape
        self.avx512 = _f16_module().avx512() if avx512 is None else avx512
        panels = -(-n // PANEL)
        data = torch.zeros(panels * PANEL, k, dtype=torch.float16)
        data[:n] = weight.detach().clamp(-65504.0, 65504.0)
        self.data = data.view(panels, PANEL, k).transpose(1, 2).contiguous()
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.out_features, self.in_features = n, k

    def __call__(self, x):
        import torch

        flat = x.reshape(-1, self.in_features).float().contiguous()
        y = torch.empty(flat.shape[0], self.out_features)
        if flat.shape[0]:
            _f16_module().product(flat.data_ptr(), flat.shape[0], self.in_features, self.data.data_ptr(),
                                  0 if self.bias is None else self.bias.data_ptr(), y.data_ptr(),
                                  self.out_features, self.avx512)
        return y.view(*x.shape[:-1], self.out_features)


@functools.cache
def _f16_module():
    """``trainer._f16`` where it is built and this CPU can run it (AVX2, FMA, F16C), else None."""
    try:
        from trainer import _f16
    except ImportError:
        return None
    return _f16 if _f16.supported() else None


def own_float16_kernel() -> bool:
    """Whether float16 layers packed now use ``trainer._f16`` rather than fbgemm's kernels.

    Where it is built and torch runs on one thread (the service's ``torch_threads: 1``). Its loops
    prefetch the weights ahead of the multiply-adds, so the rows of a step add little to the
    time of reading the weights; fbgemm's kernels wait on those reads (on AVX2 they also take at
    most 6 rows a pass). With more threads fbgemm splits the work, which ``_f16`` does not."""
    import torch

    return _f16_module() is not None and torch.get_num_threads() == 1


def _float16_product(x, packed):
    if isinstance(packed, _Panels):
        return packed(x)
    import torch

    y = torch.ops.quantized.linear_dynamic_fp16(x.reshape(-1, x.shape[-1]), packed)
    return y.view(*x.shape[:-1], y.shape[-1])


def _pack_float16(weight, bias=None, own: bool | None = None):
    """A float16 copy of a layer for ``_float16_product``: ``_Panels`` where ``own`` (default:
    ``own_float16_kernel()``, which must then be asked on the thread that set torch's threads),
    else fbgemm's packing."""
    if own if own is not None else own_float16_kernel():
        return _Panels(weight, bias)
    import torch

    return torch.ops.quantized.linear_prepack_fp16(weight, bias)


def float16_rows_independent(own: bool | None = None) -> bool:
    """Whether float16 layers give a row the same bits whatever rows share its call: those packed
    now, or with ``own`` those of the kernel ``own`` names (a model's ``_float16_own``).

    ``trainer._f16`` sums every value in one order: always. fbgemm splits a product's rows among
    kernels of a few rows each. With AVX-512 (seen on an AMD Zen 4) each kernel sums a row as the
    others do; with AVX2 (seen on an AMD Zen 3), kernels of different row counts round a row
    differently (~1e-7 of its values), so a row's bits depend on how many rows share its call, as
    with float32 (MKL). Int8 products sum in integers: always exact. This compares each of 8 rows
    alone with the same row in calls of 2 to 8 rows, once per process and kernel (about a
    millisecond)."""
    return _rows_independent(own_float16_kernel() if own is None else own)


@functools.cache
def _rows_independent(own: bool) -> bool:
    import torch

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 256, generator=gen)
    x = torch.randn(8, 256, generator=gen)
    packed = _pack_float16(weight, own=own)
    alone = torch.cat([_float16_product(x[i:i + 1], packed) for i in range(len(x))])
    return all(torch.equal(_float16_product(x[:m], packed), alone[:m]) for m in range(2, len(x) + 1))


def prepack_float16(folder) -> dict | None:
    """Start packing the 2-D weights of a model folder's safetensors files before the model exists.

    fbgemm converts element by element (about 2 s for a 135M model on one core); ``_Panels``
    take about 0.2 s. Both release the GIL, so packing from the files on every core while the
    loading thread imports transformers (seconds, one core) takes it off a worker's cold start.
    Sibling weights that ``install_float16`` serves stacked (``SHARED_INPUT``, found by name in
    one file) are packed stacked. Returns ``{tensor name, or tuple of the siblings' names: Future
    of (packed, weight)}`` for ``install_float16``, or None.
    """
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    import torch
    from safetensors import safe_open

    # One core stays with the loading thread, whose imports are what this overlaps.
    pool = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 1) - 1), thread_name_prefix="fp16-pack")
    own = own_float16_kernel()  # asked here: torch's thread count is the caller's

    def pack(*tensors):
        weight = torch.cat([t.float() for t in tensors]).contiguous()
        return _pack_float16(weight, own=own), weight

    futures = {}
    try:
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                names = [n for n in handle.keys()
                         if n.endswith(".weight") and len(handle.get_slice(n).get_shape()) == 2]
                stacked = set()
                for group in _sibling_names(names, ".weight"):
                    futures[tuple(group)] = pool.submit(pack, *map(handle.get_tensor, group))
                    stacked.update(group)
                for name in names:
                    if name not in stacked:
                        futures[name] = pool.submit(pack, handle.get_tensor(name))
    finally:
        pool.shutdown(wait=False)
    return futures


def install_float16(model, prepacked: dict | None = None) -> bool:
    """Serve the model's CPU ``nn.Linear`` layers from float16 copies of their weights.

    The float32 parameters stay (training, perplexity with autograd and the tied embedding
    use them); the copies add half the linear layers' size in memory. ``prepacked`` (from
    ``prepack_float16`` on the folder the model was loaded from) is used for every layer whose
    weight it holds unchanged and whose packing has started; the rest are packed here, on every
    core (the op releases the GIL), while the files' pool finishes what it started; the dict is
    emptied once installed. Returns False, changing nothing, where fbgemm cannot run (a CPU
    without AVX2).
    """
    import torch

    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    embedding_name = next((n for n, m in model.named_modules() if m is embedding), None)
    own = own_float16_kernel()  # asked here: torch's thread count is the caller's

    def pack(names, modules, weight, bias):
        # A tied LM head shares the input embedding's weight: the files hold it under that name.
        if len(modules) == 1 and embedding is not None and modules[0].weight is embedding.weight:
            names = [embedding_name]
        key = tuple(f"{n}.weight" for n in names)
        future = (prepacked or {}).get(key if len(key) > 1 else key[0])
        # A layer whose packing from the files has not started yet is packed here, from the model
        # (the same values), beside the files' pool: the model is loaded, so every core is free.
        if future is not None and bias is None and not future.cancel():
            packed, stored = future.result()
            if (isinstance(packed, _Panels) == own and stored.shape == weight.shape
                    and torch.equal(stored, weight)):
                return packed
        return _pack_float16(weight, bias, own=own)

    try:
        if not _install(model, "float16", pack, _float16_product):
            return False
        model._float16_own = own  # which kernel serves it: float16_rows_independent(own)
        return True
    finally:
        # Its futures hold float32 copies of the weights (half a GB for the 135M model). The
        # caller's frame, which holds this dict, can outlive the load in a reference cycle
        # (tracebacks of imports caught during loading), so they are dropped here and freed now,
        # not at the next full collection.
        if prepacked:
            prepacked.clear()


# -- int8 -------------------------------------------------------------------------------------
#
# Weights int8 per output channel, activations int8 per row, products in integers (fbgemm's
# dynamic int8 linear): a quarter of float32's bytes to read, and multiply-adds four times as
# dense as float32's. fbgemm quantizes a whole input tensor with one scale, taken from its
# minimum and maximum, which would make a row's result depend on the other rows of its batch.
# So each row is first divided by its own largest magnitude (into [-1, 1]) and an "anchor" row
# holding -128/127 and 1 goes first: every input then has the same minimum and maximum, fbgemm
# picks the same scale whatever the batch holds (1/127 with zero point 128; 255/127^2 with zero
# point 64 in 7 bits), integer sums are exact, and the output row, multiplied back by its row's
# magnitude, is the same alone or batched. A row holding NaN or infinity would move the minimum
# or maximum for everyone: it is zeroed for the product, and its output is NaN, as in float.

_STAGING = threading.local()  # per thread: {input width: staging buffer}, anchor row first
STAGING_ROWS = 256  # inputs up to this many rows reuse the thread's buffer; longer ones get their own


def _reduce_range() -> bool:
    """Whether activations must stay in 7 bits: without AVX-512 VNNI fbgemm's kernels add pairs of
    8-bit products in 16 bits, which can saturate (PyTorch's ``reduce_range`` on x86)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return not any(line.startswith("flags") and " avx512_vnni" in line for line in f)
    except OSError:
        return True


_REDUCE_RANGE = _reduce_range()


def _staging(rows: int, width: int):
    """This thread's buffer for ``rows`` input rows after the anchor row: (rows + 1, width)."""
    import torch

    buffers = _STAGING.__dict__.setdefault("buffers", {})
    buf = buffers.get(width) if rows < STAGING_ROWS else None
    if buf is None:
        # A plain tensor even when the first call runs in inference mode: later calls may not.
        with torch.inference_mode(False):
            buf = torch.zeros(max(rows, STAGING_ROWS) + 1, width)
            buf[0, 0], buf[0, 1] = -128 / 127, 1.0
        if rows < STAGING_ROWS:
            buffers[width] = buf
    return buf[:rows + 1]


def _int8_product(x, packed, bias=None):
    """``x @ weight.T + bias`` from ``packed`` (``_pack_int8``), each row quantized on its own."""
    import torch

    flat = x.reshape(-1, x.shape[-1])
    # Each row's largest magnitude (a row of zeros stays zeros: 0 / tiny = 0). abs + amax, not
    # vector_norm(inf): the same values, and vectorized over rows (4 rows of 1536: 4 us, not 21).
    scale = flat.abs().amax(1, keepdim=True).clamp_(min=1e-30)
    staged = _staging(flat.shape[0], flat.shape[1])
    torch.div(flat, scale, out=staged[1:]).nan_to_num_(0.0, 0.0, 0.0)  # (a row's NaN: its scale is NaN)
    y = torch.ops.quantized.linear_dynamic(staged, packed, _REDUCE_RANGE)[1:].mul_(scale)
    if bias is not None:
        y += bias
    return y.view(*x.shape[:-1], y.shape[-1])


def _forward_packed(self, x):
    """A layer served from packed weights: ``self._serve(x)``, its own product or its columns of a
    stacked one (``_install``)."""
    import torch
    import torch.nn.functional as F

    if torch.is_grad_enabled():  # autograd needs the real parameter
        return F.linear(x, self.weight, self.bias)
    return self._serve(x)


def _pack_int8(weight):
    import warnings

    import torch

    scale = (weight.abs().amax(1) / 127).clamp(min=1e-12).double()
    with warnings.catch_warnings():  # quantized tensors are deprecated; fbgemm's packing takes them
        warnings.simplefilter("ignore", UserWarning)
        q = torch.quantize_per_channel(weight, scale, torch.zeros(len(scale), dtype=torch.long), 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None)


# Sibling layers that a decoder block calls one after the other on the same input tensor
# (Llama, Mistral, Qwen and their kin): one product over their stacked weights serves them all,
# which saves the per-call cost (quantizing the input, fbgemm's setup) twice per attention
# and once per MLP. Each output column is computed exactly as it would be alone.
SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class _Stacked:
    """Sibling layers served by one product: the first call with an input computes every layer's
    output, and each sibling then takes its own columns for that same input (a call with another
    input, or a second call by the same layer, computes again: never a stale answer). The state is
    per thread, so that threads sharing a model never take each other's outputs."""

    def __init__(self, modules: list, product):
        self.product = product  # x -> the stacked output (..., sum of out_features)
        self.widths = [m.out_features for m in modules]
        self._state = threading.local()  # input, its outputs, siblings not yet served

    def __call__(self, index: int, x):
        state = self._state
        if getattr(state, "input", None) is not x or index not in state.left:
            state.outputs = self.product(x).split(self.widths, dim=-1)
            state.input, state.left = x, set(range(len(self.widths)))
        state.left.discard(index)
        out = state.outputs[index]
        if not state.left:  # all served: hold no activations between calls
            state.input = state.outputs = None
        return out


def _sibling_names(names, suffix: str = "") -> list[list[str]]:
    """The groups of ``SHARED_INPUT`` siblings among ``names`` (module names, or with ``suffix``
    the names of their weights in a model's files), each in ``SHARED_INPUT`` order."""
    present = set(names)
    groups = []
    for name in names:
        for siblings in SHARED_INPUT:
            group = [name[:-len(siblings[0] + suffix)] + s + suffix for s in siblings]
            if name == group[0] and all(n in present for n in group):
                groups.append(group)
    return groups


def _install(model, kind: str, pack, product, min_inputs: int = 1) -> bool:
    """Serve the model's CPU float32 ``nn.Linear`` layers from packed copies of their weights.

    ``pack(names, modules, weight, bias)`` packs one layer, or a group of siblings stacked (their
    weights and biases concatenated); ``product(x, packed)`` computes a packed product. Packing
    runs on every core (fbgemm releases the GIL). Layers with fewer than ``min_inputs`` input
    features stay as they are. Returns False, changing nothing, where fbgemm cannot run."""
    import torch

    layers = {name: m for name, m in _cpu_float32_linears(model).items() if m.in_features >= min_inputs}
    if not layers:
        return False
    # Cross-attention (encoder-decoder models) calls q on other states than k and v: no stacking.
    groups = [] if getattr(getattr(model, "config", None), "is_encoder_decoder", False) else [
        group for group in _sibling_names(layers) if len({layers[n].in_features for n in group}) == 1]
    grouped = {n for group in groups for n in group}
    units = groups + [[n] for n in layers if n not in grouped]

    def pack_unit(names):
        modules = [layers[n] for n in names]
        weight = torch.cat([m.weight.detach() for m in modules]).contiguous()
        biases = [m.bias for m in modules]
        bias = None if all(b is None for b in biases) else torch.cat(
            [b.detach() if b is not None else torch.zeros(m.out_features) for b, m in zip(biases, modules)])
        return pack(names, modules, weight, bias)

    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix=f"{kind}-pack") as pool:
            packed = list(pool.map(pack_unit, units))
    except RuntimeError as exc:  # no fbgemm on this CPU
        log.warning("%s weights unavailable here (%s); serving float32", kind, exc)
        return False
    for names, weights in zip(units, packed):
        modules = [layers[n] for n in names]
        own = functools.partial(product, packed=weights)
        stacked = _Stacked(modules, own) if len(modules) > 1 else None
        for index, module in enumerate(modules):
            if stacked is not None:
                module._stacked = stacked
            module._serve = own if stacked is None else functools.partial(stacked, index)
            module.forward = types.MethodType(_forward_packed, module)
    return True


def install_int8(model) -> bool:
    """Serve the model's CPU ``nn.Linear`` layers with int8 weights and per-row int8 activations.

    The float32 parameters stay (training and autograd use them); the int8 copies add a quarter
    of the linear layers' size; a layer with a single input feature stays float32. Returns False,
    changing nothing, where fbgemm cannot run."""
    return _install(model, "int8", lambda names, modules, weight, bias: (_pack_int8(weight), bias),
                    lambda x, packed: _int8_product(x, *packed), min_inputs=2)  # the anchor row needs 2
