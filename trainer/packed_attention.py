"""Packed decoding steps: new prompts ride along in the running batch's model call.

Continuous batching needs every new request's prompt run through the model
(prefill) before it can decode. Run on its own, a 10-token prompt costs about
two decoding steps on a CPU, and while it runs the batch waits. Packed, the
step's input is one sequence: each decoding row's next token, then every new
prompt's tokens, ``[r1 r2 r3 | p1 p1 p1 p1 | p2 p2 p2]``. The linear layers,
where a step's time goes, read their weights once for all of it; only
attention is done per part:

- decoding rows: their token against their own cached keys, over a window of the
  cache whose size depends on the row alone: its last ``bucket(keys)`` columns (keys
  rounded up to ``BUCKET``), the columns before its keys masked out. A row is laid out
  and attended the same way alone and batched, so the kernel splits its sums the same
  way (how many columns it sums over changes the result's last bits, and int8
  activations round those differences into different headlines), and neighbouring rows
  of one bucket share a call when torch runs on one thread (the service's default): a
  batch of theme prompts is one call per layer instead of one per row. With more
  threads the attention kernel's result for a row depends on which thread computes
  it, so each row gets a call of its own there, as alone. The masked columns, at most
  BUCKET - 1 before a row's first key, are kept zero (``pad``), so they weigh
  exactly 0 and nothing left in a slot by an earlier row can reach another. With
  products that compute each row on its own (fbgemm's int8 on CPU, and float16 where
  ``cpu_linear.float16_rows_independent``: the project's kernel ``trainer._f16``,
  fbgemm's with AVX-512), a row's output is then bit-identical alone and batched;
  float32 products (MKL), fbgemm's float16 on AVX2 and GPU kernels may still round
  differently with the batch's shape;
- each new prompt: causal attention over its own tokens, as in its own prefill.

On CPU in float32, where ``trainer._f16`` is built and the CPU runs it, a call's attention is that
kernel's (``_f16.attend``): each token of the packed sequence, in order, has its key and value
written to its slot and attends over exactly its own keys (a decoding row's, or its prompt's so
far), so no window, padding or mask is involved and a token has the same bits alone and batched,
on any number of threads. It replaces ~10 small torch operations a layer, some of them per row
or per prompt, with one call (on an AMD Zen 4, one thread: a 1-row step 22.0 -> 20.2 ms, a 4-row
step 25.7 -> 22.9 ms, and a joining prompt adds 12.3 ms instead of 15.1). Elsewhere (GPU, other
dtypes, no kernel) the windows and sdpa described above serve.

This module holds the attention function (registered with transformers as
``headline_packed``) and the per-call state it reads. The model keeps its own
layers and weights; only the attention between them changes, and a call
without packing state is plain ``sdpa``, masks included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

NAME = "headline_packed"
# Model types whose attention modules call the registered attention function with their
# ``layer_idx`` and whose positions come from ``position_ids`` alone (no sliding windows,
# no cross-attention): tested on both in tests/trainer/test_generation.py.
MODEL_TYPES = frozenset({"llama", "gpt2"})
SPARE = 32  # columns of room at the end of the cache buffer (see Packing._place)
SPARE_ROWS = 4  # rows of room in it, for requests that join while none leave
BUCKET = 32  # a decoding row attends over its last bucket(keys) columns (see Packing.attend)


def bucket(keys: int) -> int:
    """Columns a decoding row with ``keys`` keys attends over, the last ones its keys: ``keys``
    rounded up to a multiple of BUCKET, so that it depends on the row alone."""
    return -(-keys // BUCKET) * BUCKET


def new_buffer(key, shape):
    """A cache buffer, not cleared: what is read of it is written first (keys, and ``pad``)."""
    return key.new_empty(shape)


def _masked_from(column: int) -> int:
    """The first of the BUCKET - 1 columns before ``column`` (a row's first key) that its window
    can reach, masked out: the columns ``pad`` zeroes and ``move_rows`` moves with the keys."""
    return max(0, column - BUCKET + 1)


def pad(cache, first: int, last: int, column: int) -> None:
    """Zero the BUCKET - 1 columns before ``column`` (a row's first key) in slots ``first`` to
    ``last``, every layer: the masked part of the rows' windows, which must be finite to weigh 0."""
    cache[:, :, first:last, :, _masked_from(column):column] = 0


def move_rows(cache, moves, first: int, end: int) -> None:
    """Copy slots' keys and values, every layer, to other slots of the same buffer: ``moves`` are
    (to, from) pairs; the columns copied are ``first`` (the batch's first key column) to ``end``,
    with the BUCKET - 1 zeros before them (``pad``), so that a moved row's window is as it was."""
    start = _masked_from(first)
    for new, old in moves:
        cache[:, :, new, :, start:end] = cache[:, :, old, :, start:end]


@dataclass
class Packing:
    """One packed call.

    ``cache``: the decoding rows' keys and values, all layers in one buffer
    (layers, 2, slots, kv_heads, C, d) whose first ``rows`` slots are the rows. Row r's keys are
    the columns before ``end``, as many as its ``mask`` marks before this step's token; the columns
    before them are left padding: the BUCKET - 1 just before its first key are zeros (the row's
    window, its last ``bucket(keys)`` columns, reaches no further), the others are never read;
    the columns from ``end`` on are room for the next steps' keys, and the slots after ``rows``
    room for joining rows.
    ``mask`` (b, L + 1) marks each decoding row's real keys, its new token included: they are
    the last columns of the row, and ``runs`` groups neighbouring rows of one bucket.
    ``segments``: (offset in the packed sequence, length, rows, lead) of each new prompt; a prompt
    asked for n headlines is run once and its keys are copied to its n rows. ``lead`` (or None):
    the keys and values (layers, 2, 1, kv_heads, P, d) of the prompt's first P tokens, computed
    once (``Generator._lead``) and written to the prompt's slot for every layer at the call's
    first layer: only its other ``length`` - P tokens are in the packed sequence.
    ``layers``: the model's, for a new buffer.
    After the call ``new_cache`` holds every row's keys and values, decoding rows first, in the same
    layout: the columns ``new_end - width`` to ``new_end`` of its first slots, each row
    left-padded. It is ``cache``, written in place (its rows moved back when its columns ran out),
    unless the call's rows or keys outgrow it: then a new buffer with room (``_place``).
    """

    cache: torch.Tensor | None
    mask: torch.Tensor | None
    rows: int
    segments: list[tuple[int, int, int, torch.Tensor | None]]
    width: int
    end: int = 0
    layers: int = field(kw_only=True)
    new_cache: torch.Tensor | None = None
    new_end: int = 0
    lead_masks: dict = field(init=False, repr=False)
    keys: list = field(init=False, repr=False)
    runs: list = field(init=False, repr=False)
    run_masks: list = field(init=False, repr=False)
    plan: torch.Tensor | None = field(default=None, init=False, repr=False)  # see _plan
    kernel: Any = field(default=None, init=False, repr=False)

    def __post_init__(self):
        """Made once per call, the same in every layer: the decoding rows' ``keys`` (real ones,
        this step's included), their ``runs`` (first row, end row, window columns) of neighbouring
        rows in one bucket (each row its own run when torch runs on more than one thread), and the
        attention mask (fed, length) of each segment with a lead: its fed tokens see the lead and
        the tokens before them."""
        import torch

        self.keys, self.runs, self.run_masks = [], [], []
        if self.rows:
            self.keys = self.mask.sum(1).tolist()
            shared = torch.get_num_threads() == 1
            for row, keys in enumerate(self.keys):
                if shared and self.runs and self.runs[-1][2] == bucket(keys):
                    self.runs[-1][1] = row + 1
                else:
                    self.runs.append([row, row + 1, bucket(keys)])
        self.lead_masks = {}
        for i, (_, length, _, lead) in enumerate(self.segments):
            if lead is not None:
                P = lead.shape[4]
                self.lead_masks[i] = torch.ones((length - P, length), dtype=torch.bool,
                                                device=lead.device).tril(P)

    def _place(self, key, masks: bool = True) -> None:
        """At the call's first layer: where this call's keys go, for every layer (``new_cache``,
        ``new_end``).

        The buffer has room for SPARE more columns and SPARE_ROWS more rows than it holds. A step
        whose keys fit writes them in place: each decoding row's new key in the column after its
        others, a joining prompt's keys in a free slot, right-aligned with the rows (ending in the
        same column). A step that runs out of columns moves the rows' keys back, in one copy for
        all layers, so that they end at ``bucket(width + SPARE)``: each row's window then fits
        before them. Only a step that runs out of slots, or whose rows' keys outgrow the buffer
        (a batch whose rows keep growing does so every SPARE steps), copies them into a new buffer
        with that room. Wherever a row's keys are put, the BUCKET - 1 columns before them are
        zeroed (``pad``): its window's masked part. Also made here: each run's mask."""
        b, width, cache = self.rows, self.width, self.cache
        total = b + sum(n for _, _, n, _ in self.segments)  # rows after this step
        # The column after this step's keys; a batch whose rows all left starts its prompts where a
        # new buffer would.
        end = self.end + 1 if b else bucket(width + SPARE)
        slots = cache is not None and cache.shape[2] >= total
        # (A batch whose rows all left keeps its buffer for the prompts that join it.)
        if not (slots and cache.shape[4] >= end >= bucket(width)):
            cached = self.mask.shape[-1] if b else 0  # the decoding rows' keys after this step's token
            end = bucket(width + SPARE)
            old = cache[:, :, :b, :, self.end - cached + 1:self.end] if b else None
            if slots and cache.shape[4] >= end + SPARE:
                # Out of columns only: the rows move back in their own buffer (their keys may
                # overlap where they go, hence the copy).
                if b:
                    cache[:, :, :b, :, end - cached:end - 1] = old.clone()
            else:
                cache = new_buffer(key, (self.layers, 2, total + SPARE_ROWS, key.shape[1], end + SPARE, key.shape[-1]))
                if b:  # the decoding rows' keys, left-padded to the new width
                    cache[:, :, :b, :, end - cached:end - 1] = old
            for row, keys in enumerate(self.keys):  # this step's key included: the last column
                pad(cache, row, row + 1, end - keys)
        row = b
        for _, length, rows, lead in self.segments:  # joining prompts' rows, and their leads' keys
            pad(cache, row, row + rows, end - length)
            if lead is not None:
                cache[:, :, row:row + 1, :, end - length:end - length + lead.shape[4]] = lead
            row += rows
        self.new_cache, self.new_end = cache, end
        if masks:  # (the windows' masks: for sdpa, not for trainer._f16's attention)
            self.run_masks = [self._run_mask(i, j, B, key) for i, j, B in self.runs]

    def _run_mask(self, i: int, j: int, B: int, key):
        """The additive mask (j - i, 1, 1, B) of a run's windows: 0 on each row's keys (its last
        columns), -inf on the columns before them."""
        import torch

        keys = torch.tensor(self.keys[i:j], device=key.device).view(j - i, 1, 1, 1)
        before = torch.arange(B, device=key.device) < B - keys
        return key.new_zeros((j - i, 1, 1, B)).masked_fill_(before, float("-inf"))

    def _plan(self, kernel) -> None:
        """At the call's first layer, where ``kernel`` (``trainer._f16``) serves it: each token's slot,
        stop and count (3, S) int64, the same in every layer. A decoding row's token goes to column
        ``new_end`` - 1 of its slot after its keys; a prompt's fed tokens go to the columns after its
        lead, each seeing the lead and the tokens before it."""
        import torch

        end, slots, stops, counts = self.new_end, [], [], []
        for row, keys in enumerate(self.keys):
            slots.append(row), stops.append(end), counts.append(keys)
        row = self.rows
        for i, (_, length, rows, _) in enumerate(self.segments):
            mask = self.lead_masks.get(i)
            fed = length if mask is None else mask.shape[0]
            for t in range(fed):
                slots.append(row), stops.append(end - fed + t + 1), counts.append(length - fed + t + 1)
            row += rows
        self.plan = torch.tensor([slots, stops, counts], dtype=torch.int64)
        self.kernel = kernel

    def attend(self, layer: int, query, key, value, scale: float | None):
        """query (1, H, S, d), key/value (1, kv_heads, S, d) of the packed sequence -> (1, S, H, d)."""
        import torch
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        if self.new_cache is None:
            kernel = _kernel()
            dtypes = {query.dtype, key.dtype, value.dtype, (key if self.cache is None else self.cache).dtype}
            native = (kernel is not None and query.device.type == "cpu" and dtypes == {torch.float32}
                      and query.shape[0] == 1 and query.shape[-1] % 8 == 0
                      and query.stride(-1) == key.stride(-1) == value.stride(-1) == 1
                      and (self.cache is None or self.cache.is_contiguous()))
            self._place(key, masks=not native)
            if native:
                self._plan(kernel)
        if self.plan is not None:
            return self._attend_kernel(layer, query, key, value, scale), None
        b, width, end = self.rows, self.width, self.new_end
        heads, kv_heads, d = query.shape[1], key.shape[1], query.shape[-1]
        group = heads // kv_heads
        kc, vc = self.new_cache[layer, 0], self.new_cache[layer, 1]  # (slots, kv_heads, C, d)
        keys, values = kc[:, :, end - width:end], vc[:, :, end - width:end]  # this call's columns
        outs = []
        if b:
            # Each row's new key joins its cache; the row's query heads that share a key head
            # are laid out as that head's queries (as transformers' pack_gqa does for decoding).
            # Each run attends over its rows' windows: the last B columns before the end.
            keys[:b, :, width - 1] = key[0, :, :b].transpose(0, 1)
            values[:b, :, width - 1] = value[0, :, :b].transpose(0, 1)
            q = query[0, :, :b].transpose(0, 1).reshape(b, kv_heads, group, d)
            parts = [sdpa(q[i:j], kc[i:j, :, end - B:end], vc[i:j, :, end - B:end], attn_mask=mask, scale=scale)
                     for (i, j, B), mask in zip(self.runs, self.run_masks)]  # each (j - i, kv_heads, group, d)
            out = torch.cat(parts) if len(parts) > 1 else parts[0]
            outs.append(out.reshape(b, heads, d).transpose(0, 1))  # (H, b, d)
        row = b
        for i, (offset, length, rows, _) in enumerate(self.segments):
            mask = self.lead_masks.get(i)
            fed = length if mask is None else mask.shape[0]
            # The prompt's keys go to its first row's slot, right-aligned: its lead's (computed
            # once), then those of its fed tokens; its fed tokens attend over them there.
            k, v = keys[row:row + 1, :, width - length:width], values[row:row + 1, :, width - length:width]
            k[:, :, length - fed:] = key[:, :, offset:offset + fed]  # (its lead's: written by _place)
            v[:, :, length - fed:] = value[:, :, offset:offset + fed]
            out = sdpa(query[:, :, offset:offset + fed], k, v, attn_mask=mask, is_causal=mask is None,
                       scale=scale, enable_gqa=group > 1)
            outs.append(out[0])  # (H, fed, d)
            if rows > 1:  # its other headlines' rows
                keys[row + 1:row + rows, :, width - length:width] = k
                values[row + 1:row + rows, :, width - length:width] = v
            row += rows
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return out.transpose(0, 1).unsqueeze(0), None

    def _attend_kernel(self, layer: int, query, key, value, scale: float | None):
        """The call's attention through ``trainer._f16.attend`` (see ``_plan``) -> (1, S, H, d)."""
        import torch

        heads, kv_heads, S, d = query.shape[1], key.shape[1], query.shape[2], query.shape[3]
        if self.plan.shape[1] != S:
            raise RuntimeError(f"packed attention: {S} tokens in the call, {self.plan.shape[1]} planned")
        kc, vc = self.new_cache[layer, 0], self.new_cache[layer, 1]  # (slots, kv_heads, C, d) each
        out = torch.empty((S, heads, d))
        q, k, v = query.stride(), key.stride(), value.stride()
        self.kernel.attend(S, heads, kv_heads, d, query.data_ptr(), q[2], q[1], key.data_ptr(), k[2], k[1],
                           value.data_ptr(), v[2], v[1], kc.data_ptr(), vc.data_ptr(), kc.shape[0], kc.shape[2],
                           self.plan.data_ptr(), d ** -0.5 if scale is None else scale, out.data_ptr())
        row, end = self.rows, self.new_end
        for _, length, rows, _ in self.segments:
            if rows > 1:  # its other headlines' rows take its keys
                kc[row + 1:row + rows, :, end - length:end] = kc[row:row + 1, :, end - length:end]
                vc[row + 1:row + rows, :, end - length:end] = vc[row:row + 1, :, end - length:end]
            row += rows
        return out.unsqueeze(0)


def _kernel():
    """``trainer._f16`` where it is built and this CPU runs it (see ``cpu_linear._f16_module``)."""
    from trainer.cpu_linear import _f16_module

    return _f16_module()


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                     scaling: float | None = None, packing: Packing | None = None, **kwargs):
    """The registered attention function: packed when the call carries ``packing``, else sdpa."""
    if packing is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    return packing.attend(module.layer_idx, query, key, value, scaling)


def enable(model) -> bool:
    """Switch ``model`` (an sdpa model of a supported type) to the packed-capable attention."""
    config = model.config
    if (config.model_type not in MODEL_TYPES or config._attn_implementation != "sdpa"
            or getattr(config, "sliding_window", None) or getattr(config, "is_encoder_decoder", False)):
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
