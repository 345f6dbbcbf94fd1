"""Packed decoding steps: new prompts ride along in the running batch's model call.

Continuous batching needs every new request's prompt run through the model
(prefill) before it can decode. Run on its own, a 10-token prompt costs about
two decoding steps on a CPU, and while it runs the batch waits. Packed, the
step's input is one sequence: each decoding row's next token, then every new
prompt's tokens, ``[r1 r2 r3 | p1 p1 p1 p1 | p2 p2 p2]``. The linear layers,
where a step's time goes, read their weights once for all of it; only
attention is done per part:

- decoding rows: their token against exactly their own cached keys. Rows of one
  length share a call; a row is never attended over padding, since masked padding
  columns change how the kernel's sums are split and so the result's last bits (and
  int8 activations round those differences into different headlines). With
  products that compute each row on its own (fbgemm's int8 on CPU, and its float16
  where ``cpu_linear.float16_rows_independent``, as with AVX-512), a row's output is
  then bit-identical alone and batched; float32 products (MKL), float16 on AVX2 and
  GPU kernels may still round differently with the batch's shape;
- each new prompt: causal attention over its own tokens, as in its own prefill.

This module holds the attention function (registered with transformers as
``headline_packed``) and the per-call state it reads. The model keeps its own
layers and weights; only the attention between them changes, and a call
without packing state is plain ``sdpa``, masks included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NAME = "headline_packed"
# Model types whose attention modules call the registered attention function with their
# ``layer_idx`` and whose positions come from ``position_ids`` alone (no sliding windows,
# no cross-attention): tested on both in tests/trainer/test_generation.py.
MODEL_TYPES = frozenset({"llama", "gpt2"})
SPARE = 32  # columns of room at the end of each layer's cache buffers (see Packing.attend)


@dataclass
class Packing:
    """One packed call. ``keys``/``values``: per layer, the decoding rows' cache (b, kv_heads, L, d).

    Each buffer may be wider than L: columns from L on are room for the next steps' keys.
    ``mask`` (b, L + 1) marks each decoding row's real keys, its new token included: they are
    the last columns of the row (rows are left-padded), and ``runs`` groups neighbouring rows with
    as many.
    ``segments``: (offset in the packed sequence, length, rows, lead) of each new prompt; a prompt
    asked for n headlines is run once and its keys are copied to its n rows. ``lead`` (or None):
    per layer, the keys and values (1, kv_heads, P, d) of the prompt's first P tokens, computed
    once (``Generator._lead``): only its other ``length`` - P tokens are in the packed sequence.
    After the call ``new_keys``/``new_values`` hold every row's cache, decoding rows first,
    left-padded to ``width`` (its first ``width`` columns; the buffers have room beyond).
    """

    keys: list | None
    values: list | None
    mask: torch.Tensor | None
    rows: int
    segments: list[tuple[int, int, int, tuple[list, list] | None]]
    width: int
    new_keys: dict = field(default_factory=dict)
    new_values: dict = field(default_factory=dict)
    lead_masks: dict = field(init=False, repr=False)
    runs: list = field(init=False, repr=False)

    def __post_init__(self):
        """Made once per call, the same in every layer: the decoding rows' ``runs`` (first row,
        end row, keys) of neighbouring rows with as many real keys, and the attention mask
        (fed, length) of each segment with a lead: its fed tokens see the lead and the tokens
        before them."""
        import torch

        self.runs = []
        if self.rows:
            for row, keys in enumerate(self.mask.sum(1).tolist()):
                if self.runs and self.runs[-1][2] == keys:
                    self.runs[-1][1] = row + 1
                else:
                    self.runs.append([row, row + 1, keys])
        self.lead_masks = {}
        for i, (_, length, _, lead) in enumerate(self.segments):
            if lead:
                P = lead[0][0].shape[2]
                self.lead_masks[i] = torch.ones((length - P, length), dtype=torch.bool,
                                                device=lead[0][0].device).tril(P)

    def attend(self, layer: int, query, key, value, scale: float | None):
        """query (1, H, S, d), key/value (1, kv_heads, S, d) of the packed sequence -> (1, S, H, d)."""
        import torch
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        b, width = self.rows, self.width
        heads, kv_heads, d = query.shape[1], key.shape[1], query.shape[-1]
        group = heads // kv_heads
        cached = self.mask.shape[-1] if b else 0  # the decoding rows' keys after this step's token
        # The cache is kept in buffers with room for SPARE more columns than it holds, so that a
        # plain decoding step writes each row's new key in place instead of copying the whole
        # cache (a concatenation per layer and step, the larger the longer the rows get).
        reuse = b and not self.segments and self.keys[layer].shape[2] >= cached
        if reuse:
            keys, values = self.keys[layer], self.values[layer]
        else:
            rows = b + sum(n for _, _, n, _ in self.segments)
            keys = key.new_zeros((rows, kv_heads, width + SPARE, d))
            values = value.new_zeros((rows, kv_heads, width + SPARE, d))
        outs = []
        if b:
            # Each row's new key joins its cache; the row's query heads that share a key head
            # are laid out as that head's queries (as transformers' pack_gqa does for decoding).
            start = width - cached  # left padding of the decoding rows when a longer prompt joins
            if not reuse:
                keys[:b, :, start:width - 1] = self.keys[layer][:, :, :cached - 1]
                values[:b, :, start:width - 1] = self.values[layer][:, :, :cached - 1]
            keys[:b, :, width - 1] = key[0, :, :b].transpose(0, 1)
            values[:b, :, width - 1] = value[0, :, :b].transpose(0, 1)
            q = query[0, :, :b].transpose(0, 1).reshape(b, kv_heads, group, d)
            parts = [sdpa(q[i:j], keys[i:j, :, width - n:width], values[i:j, :, width - n:width], scale=scale)
                     for i, j, n in self.runs]  # each (j - i, kv_heads, group, d)
            out = torch.cat(parts) if len(parts) > 1 else parts[0]
            outs.append(out.reshape(b, heads, d).transpose(0, 1))  # (H, b, d)
        row = b
        for i, (offset, length, rows, lead) in enumerate(self.segments):
            mask = self.lead_masks.get(i)
            fed = length if mask is None else mask.shape[0]
            k = key[:, :, offset:offset + fed]
            v = value[:, :, offset:offset + fed]
            if lead:  # the prompt's first tokens come from the lead: its fed tokens attend to them too
                k = torch.cat([lead[0][layer], k], dim=2)
                v = torch.cat([lead[1][layer], v], dim=2)
            kq, vq = (k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)) if group > 1 else (k, v)
            out = sdpa(query[:, :, offset:offset + fed], kq, vq, attn_mask=mask, is_causal=mask is None,
                       scale=scale)
            outs.append(out[0])  # (H, fed, d)
            keys[row:row + rows, :, width - length:width] = k
            values[row:row + rows, :, width - length:width] = v
            row += rows
        self.new_keys[layer], self.new_values[layer] = keys, values
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return out.transpose(0, 1).unsqueeze(0), None


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
