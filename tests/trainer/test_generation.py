"""trainer.generation: batched decoding equals one-at-a-time, stopping, settings."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
import torch

from config import ConfigError, load_config
from tests.threads import torch_threads
from trainer.errors import TrainerError
from trainer.generation import GenerationSettings, Generator, postprocess
from trainer.modeling import load_model_and_tokenizer


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    return Generator(model, tokenizer, load_config(), name="tiny", version="v1")


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    from tests.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama")


# Every decoding path: packed steps on GPT-2 and on Llama (rotary positions, grouped-query
# attention: the packaged model's family), and the general path (prefill, then merged caches).
# The service's float16 and int8 weights (trainer.cpu_linear) go through the same checks on Llama.
PATHS = ["gpt2-packed", "llama-packed", "gpt2-general", "llama-packed-float16", "llama-packed-int8"]
# The packed paths alone, for tests of the packed cache (the general path keeps transformers').
packed_paths = pytest.mark.parametrize("any_generator", [p for p in PATHS if "packed" in p], indirect=True)


@pytest.fixture(autouse=True, params=["kernel", "sdpa"])
def attention(request, monkeypatch):
    """Every test both ways of packed attention: trainer._f16's kernel (on CPUs that run it, in
    float32) and the windows with sdpa (elsewhere)."""
    from trainer import packed_attention

    if request.param == "sdpa":
        monkeypatch.setattr(packed_attention, "_kernel", lambda: None)
    elif packed_attention._kernel() is None:
        pytest.skip("trainer._f16 does not run on this CPU: sdpa only")
    return request.param


@pytest.fixture(scope="module", params=PATHS)
def any_generator(request, tiny_model_dir, tiny_llama_dir):
    arch, path, *weights = request.param.split("-")
    weights = weights[0] if weights else "float32"
    model, tokenizer = load_model_and_tokenizer(str(tiny_llama_dir if arch == "llama" else tiny_model_dir))
    # Loaded on one thread, as the service loads (service.torch_threads: 1): its float16 layers
    # get the kernel the service's get (trainer._f16 where it is built).
    with torch_threads(1):
        gen = Generator(model, tokenizer, load_config(), name=f"tiny-{arch}", version="v1",
                        packed=path == "packed", weights=weights)
    assert gen._packed == (path == "packed") and gen.weights == weights
    return gen


def test_float16_weights_stay_close_to_float32(tiny_llama_dir):
    """Float16 serving rounds the weights, nothing else: next-token logits stay within float16
    rounding of the float32 model's, and training-mode (autograd) calls use the float32 weights."""
    cfg = load_config()
    logits = {}
    for weights in ("float32", "float16"):
        model, tokenizer = load_model_and_tokenizer(str(tiny_llama_dir))
        gen = Generator(model, tokenizer, cfg, name="tiny-llama", weights=weights)
        assert gen.weights == weights
        batch = gen.open_batch()
        batch.add([(p, GenerationSettings(max_new_tokens=3), i) for i, p in enumerate(PROMPTS)])
        batch.step()
        logits[weights] = batch._t["logits"]
        if weights == "float16":
            ids = torch.tensor([tokenizer("Theme: oil")["input_ids"]])
            with torch.enable_grad():
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            assert model.model.layers[0].mlp.up_proj.weight.grad is not None
    diff = (logits["float16"] - logits["float32"]).abs().max()
    assert 0 < diff < 1e-2 * logits["float32"].abs().max()


PROMPTS = [
    "Theme: oil price\nHeadline:",
    "Category: sport\nTheme: cup final penalty\nHeadline:",
    "Theme: phone maker shares\nHeadline:",
]


def test_batched_equals_one_at_a_time_with_mixed_settings(any_generator):
    generator = any_generator
    settings = [
        GenerationSettings(max_new_tokens=10),
        GenerationSettings(do_sample=True, seed=3, temperature=0.9, top_k=20, max_new_tokens=6),
        GenerationSettings(do_sample=True, seed=11, top_p=0.5, repetition_penalty=1.5, num_return=3),
    ]
    batched = generator.generate(PROMPTS, settings)
    alone = [generator.generate([p], [s])[0] for p, s in zip(PROMPTS, settings)]
    assert [b.texts for b in batched] == [a.texts for a in alone]
    assert [b.completion_tokens for b in batched] == [a.completion_tokens for a in alone]
    assert [len(b.texts) for b in batched] == [1, 1, 3]


def _trace(batch, log):
    """Record the next-token logits of every active row, keyed by (tag, row, tokens so far), and
    check that each row's real positions are the last of the cache (left padding only): packed
    steps attend over those last columns, with the padding in their window masked out."""
    if "attention" in batch._t:
        attention = batch._t["attention"].bool()
        width = attention.shape[1]
        suffix = torch.arange(width) >= width - attention.sum(1, keepdim=True)
        assert torch.equal(attention, suffix)
    for row, logits in zip(batch._rows, batch._t.get("logits", ())):
        log[(row.request.tag, row.request.rows.index(row), len(row.out))] = logits.clone()


def _step(batch, joined, done, refill=None) -> None:
    """One step of ``batch``, its rows' logits recorded in ``joined`` first (``_trace``) and its
    finished requests added to ``done``."""
    _trace(batch, joined)
    done.update(batch.step(refill=refill))


def _drain(batch, joined, done) -> None:
    """``_step`` until every request in ``batch`` has finished."""
    while len(batch):
        _step(batch, joined, done)


def test_requests_joining_a_running_batch_get_their_own_output(any_generator):
    """Continuous batching: rows join between steps, with prompts shorter and longer than the
    batch's cached length, and leave when done; each request gets the tokens, and at every step
    the logits, of its one-at-a-time run."""
    generator = any_generator
    long_prompt = "Category: business\nArticle: The company said profits doubled and shares rose.\nHeadline:"
    items = [
        (PROMPTS[0], GenerationSettings(max_new_tokens=12), "a"),
        (PROMPTS[1], GenerationSettings(do_sample=True, seed=3, temperature=0.9, top_k=20, max_new_tokens=9), "b"),
        (long_prompt, GenerationSettings(do_sample=True, seed=11, top_p=0.5, num_return=2, max_new_tokens=7), "c"),
        ("Theme: tax\nHeadline:", GenerationSettings(max_new_tokens=5, repetition_penalty=1.5), "d"),
    ]
    joined, done = {}, {}
    batch = generator.open_batch()
    batch.add(items[:1])
    for _ in range(2):
        _step(batch, joined, done)
    assert batch.can_join and batch.rows == 1
    batch.add(items[1:3])  # one prompt shorter, one longer than the batch's cached length
    assert batch.rows == 4 and len(batch) == 3
    _step(batch, joined, done)
    batch.add(items[3:])
    _drain(batch, joined, done)
    assert batch.rows == 0 and batch.step() == []

    _assert_alone(generator, items, done, joined)


def _assert_alone(generator, items, done, joined) -> None:
    """Each ``(prompt, settings, tag)`` of ``items`` got in ``done`` (its result) and ``joined``
    (``_trace``'s logits) exactly what it gets alone in a batch of its own."""
    for prompt, settings, tag in items:
        alone_log, finished = {}, []
        alone = generator.open_batch()
        alone.add([(prompt, settings, tag)])
        while len(alone):
            _trace(alone, alone_log)
            finished += alone.step()
        ((_, result),) = finished
        assert done[tag].texts == result.texts, tag
        assert done[tag].completion_tokens == result.completion_tokens, tag
        assert done[tag].prompt_tokens == result.prompt_tokens, tag
        for key, logits in alone_log.items():
            if generator._packed and rows_exact(generator):
                # Each row attends over a window of its own (its keys, masked padding before
                # them), and int8 products (and float16 ones, where the kernel allows it:
                # trainer._f16, fbgemm's with AVX-512) compute each row on its own: the same
                # bits alone and batched.
                assert torch.equal(joined[key], logits), key
            else:  # float32 products (MKL), fbgemm's AVX2 float16 kernels and the general path's
                # attention over the batch's padding round differently with the batch's shape
                assert torch.allclose(joined[key], logits, atol=1e-4), key


def rows_exact(generator) -> bool:
    """Whether the generator's products give a row the same bits alone and in any batch on this CPU."""
    from trainer import cpu_linear

    return generator.weights == "int8" or (
        generator.weights == "float16" and cpu_linear.float16_rows_independent(generator.model._float16_own))


@pytest.mark.parametrize("penalty", [1.0, 1.5])
def test_greedy_tokens_equal_hugging_face_generate(any_generator, penalty):
    """The decoding loop (repetition penalty on each row's own prompt and output tokens, greedy
    pick) chooses the tokens of transformers' own ``generate`` for the same model, batched."""
    generator = any_generator
    model, tok = generator.model, generator.tokenizer
    settings = GenerationSettings(max_new_tokens=8, repetition_penalty=penalty)
    ours = generator.open_batch()
    ours.add([(p, settings, i) for i, p in enumerate(PROMPTS)])
    rows = list(ours._rows)
    while len(ours):
        ours.step()
    for prompt, row in zip(PROMPTS, rows):
        ids = torch.tensor([tok(prompt)["input_ids"]])
        with torch.inference_mode():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                 repetition_penalty=penalty, pad_token_id=generator._pad)[0, ids.shape[1]:].tolist()
        cut = next((i for i, t in enumerate(ref) if t in generator._stop_ids), len(ref))
        assert row.out == ref[:cut], prompt


@pytest.mark.parametrize("vocab", [49152, 50257, 1000, 512, 20])
def test_argmax_rows_equals_argmax(vocab):
    """Greedy picks take each row's first largest logit (or its first NaN), as torch.argmax."""
    from trainer.generation import argmax_rows

    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        x = torch.randn(5, vocab, generator=gen)
        if trial % 3 == 0:
            x = x.mul(2).round()  # many ties, across and within chunks
        if trial % 4 == 0:
            x[1, torch.randint(0, vocab, (3,), generator=gen)] = float("nan")
        if trial % 5 == 0:
            x[2] = float("-inf")
        if trial % 6 == 0:
            x[3, -1] = 1e9  # the largest value in the last (partial) chunk
        assert torch.equal(argmax_rows(x), x.argmax(-1)), trial
        assert torch.equal(argmax_rows(x[:, :vocab - 7]), x[:, :vocab - 7].argmax(-1)), trial  # strided rows


def test_a_prompt_of_no_tokens_is_refused_and_the_batch_goes_on(any_generator):
    generator = any_generator
    batch = generator.open_batch()
    batch.add([(PROMPTS[0], GenerationSettings(max_new_tokens=4), "a")])
    batch.step()
    with pytest.raises(TrainerError, match="no tokens"):
        batch.add([(PROMPTS[1], GenerationSettings(), "b"), ("", GenerationSettings(), "c")])
    assert len(batch) == 1  # neither request of the refused call was admitted
    done = {}
    while len(batch):
        done.update(batch.step())
    assert done["a"].texts == generator.generate([PROMPTS[0]], GenerationSettings(max_new_tokens=4))[0].texts


def test_decoding_rows_in_one_bucket_share_an_attention_call():
    """Packing.runs: on one thread (the service's), neighbouring decoding rows whose real keys
    (the last columns of their mask) round up to the same window (packed_attention.bucket) form
    one run, attended in one call; any other row starts a new run. On more threads every row is
    a run of its own."""
    from trainer.packed_attention import BUCKET, Packing, bucket

    assert BUCKET == 32 and [bucket(n) for n in (1, 32, 33, 64, 65)] == [32, 32, 64, 64, 96]
    lengths = [3, 33, 40, 3, 64, 65, 1]
    mask = torch.zeros((len(lengths), 65), dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, 65 - n:] = True
    with torch_threads(1):
        packing = Packing(None, mask, len(lengths), [], 65, layers=1)
    with torch_threads(2):
        apart = Packing(None, mask, len(lengths), [], 65, layers=1)
    assert packing.keys == lengths
    assert packing.runs == [[0, 1, 32], [1, 3, 64], [3, 4, 32], [4, 5, 64], [5, 6, 96], [6, 7, 32]]
    assert apart.runs == [[r, r + 1, bucket(n)] for r, n in enumerate(lengths)]
    assert Packing(None, None, 0, [(0, 2, 1, None)], 2, layers=1).runs == []  # a prompt alone: no decoding rows


@pytest.mark.parametrize("threads", [1, 2])
def test_a_decoding_row_attends_the_same_alone_batched_and_whatever_its_padding_holds(threads):
    """A decoding row attends over its window (its last bucket(keys) columns), the columns before
    its keys masked out: its output is bit-identical alone (in another slot, at another end
    column) and batched with rows of other lengths, in its bucket and in others; the same
    whatever finite values the masked columns hold; and with 2 torch threads too, where the
    kernel's result depends on the thread, so rows get calls of their own. Shapes of SmolLM2's
    attention (3 key heads of 3 query heads, 64 dimensions)."""
    from trainer.packed_attention import Packing

    torch.manual_seed(0)
    heads, kv_heads, d, slots = 9, 3, 64, 8
    lengths = [5, 12, 30, 40, 3, 31]  # keys before this step's: buckets 32, 32, 32, 64, 32, 32
    query = torch.randn(1, heads, len(lengths), d)
    key, value = torch.randn(1, kv_heads, len(lengths), d), torch.randn(1, kv_heads, len(lengths), d)
    cache = torch.randn(1, 2, len(lengths), kv_heads, 72, d)  # row r's keys: its last columns before 70

    def attend(rows, end, first_slot=0, padding_seed=None):
        """Rows ``rows`` of the example in slots from ``first_slot`` on, their keys the columns
        before ``end``; with ``padding_seed`` the columns before them hold random values."""
        buffer = torch.zeros((1, 2, slots, kv_heads, 100, d))
        if padding_seed is not None:
            buffer.copy_(torch.randn(buffer.shape, generator=torch.Generator().manual_seed(padding_seed)) * 100)
        width = max(lengths[r] for r in rows) + 1
        mask = torch.zeros((first_slot + len(rows), width), dtype=torch.bool)
        for slot, r in enumerate(rows, first_slot):
            n = lengths[r]
            buffer[:, :, slot, :, end - n:end] = cache[:, :, r, :, 70 - n:70]
            mask[slot, width - n - 1:] = True
        mask[:first_slot, -1] = True  # rows before them: one key each
        packing = Packing(buffer, mask, first_slot + len(rows), [], width, end, layers=1)
        pick = [0] * first_slot + rows
        out, _ = packing.attend(0, query[:, :, pick], key[:, :, pick], value[:, :, pick], scale=None)
        assert packing.new_cache is buffer
        return out[0, first_slot:]  # (rows, heads, d)

    with torch_threads(threads):
        batched = attend(list(range(len(lengths))), 70)
        assert torch.equal(batched, attend(list(range(len(lengths))), 70, padding_seed=1))
        for r in range(len(lengths)):
            assert torch.equal(batched[r], attend([r], 64 + r, first_slot=r % 3, padding_seed=r)[0]), r
    # What it is: each row's softmax attention over its own keys and this step's.
    for r, n in enumerate(lengths):
        k = torch.cat([cache[0, 0, r, :, 70 - n:70], key[0, :, r, None]], dim=1).repeat_interleave(3, 0)
        v = torch.cat([cache[0, 1, r, :, 70 - n:70], value[0, :, r, None]], dim=1).repeat_interleave(3, 0)
        weights = torch.softmax(query[0, :, r, None] @ k.transpose(1, 2) / d ** 0.5, dim=-1)
        torch.testing.assert_close(batched[r], (weights @ v)[:, 0])


def test_the_attention_kernel_refuses_a_plan_outside_its_cache(attention):
    """trainer._f16.attend checks every token's slot and columns against the cache before it writes
    anything: a plan outside it is a ValueError naming the token, and the cache is left as it was."""
    from trainer import packed_attention

    if attention == "sdpa":
        pytest.skip("the kernel's own check")
    kernel = packed_attention._kernel()
    q, k, v = torch.randn(2, 9, 64), torch.randn(2, 3, 64), torch.randn(2, 3, 64)  # (tokens, heads, d)
    cache = torch.zeros(2, 4, 3, 16, 64)  # keys and values: (slots, key heads, columns, d) each
    before, out = cache.clone(), torch.empty(2, 9, 64)

    def attend(plan):  # plan: each token's slot, stop and count
        plan = torch.tensor(plan, dtype=torch.int64)
        kernel.attend(2, 9, 3, 64, q.data_ptr(), 9 * 64, 64, k.data_ptr(), 3 * 64, 64, v.data_ptr(), 3 * 64, 64,
                      cache[0].data_ptr(), cache[1].data_ptr(), 4, 16, plan.data_ptr(), 0.125, out.data_ptr())

    for bad in ([[0, 4], [5, 5], [1, 1]], [[0, 1], [5, 17], [1, 1]], [[0, 1], [5, 5], [1, 6]], [[0, 1], [5, 5], [1, 0]]):
        with pytest.raises(ValueError, match="token 1: .* outside the cache"):
            attend(bad)
        assert torch.equal(cache, before)
    attend([[0, 1], [5, 5], [1, 5]])
    torch.testing.assert_close(out[0], v[0].repeat_interleave(3, 0))  # one key: its value, every head
    assert torch.equal(cache[0, 1, :, 4], k[1]) and torch.equal(cache[1, 1, :, 4], v[1])


def _nan_buffers(monkeypatch) -> None:
    """New cache buffers made full of NaN, where packed_attention leaves them uncleared."""
    from trainer import packed_attention

    monkeypatch.setattr(packed_attention, "new_buffer", lambda key, shape: key.new_full(shape, float("nan")))


@packed_paths
def test_nothing_left_in_a_buffer_reaches_the_rows_that_take_it(any_generator, monkeypatch):
    """Slots are reused: a joining prompt takes one that an earlier row left, a moved row another,
    a new batch the last batch's buffer, and a new buffer is not cleared. A row's window reads
    the columns just before its keys, masked out; they are zeroed wherever a row is put, so
    whatever was there (NaN here, everywhere not yet written) changes no output."""
    from trainer import packed_attention

    monkeypatch.setattr(packed_attention, "SPARE", 2)  # columns run out: rows move back, buffers grow
    _nan_buffers(monkeypatch)
    generator = any_generator
    spare = generator._spare_cache
    monkeypatch.setattr(generator, "_spare_cache", None if spare is None else torch.full_like(spare, float("nan")))
    batch, joined, done = generator.open_batch(), {}, {}
    prompts = [PROMPTS[1], PROMPTS[0], "Theme: tax\nHeadline:"]
    items = [(prompts[i % 3], GenerationSettings(max_new_tokens=3 + i % 4), i) for i in range(12)]
    for item in items:
        batch.add([item])
        _step(batch, joined, done)
    _drain(batch, joined, done)
    _assert_alone(generator, items, done, joined)


@packed_paths
def test_a_row_moved_into_a_freed_slot_takes_the_zeros_before_its_keys(any_generator, monkeypatch):
    """When a short row leaves, the batch's last row moves into its slot. If the mover is the
    widest row, the masked part of its window lies before the batch's first used column, where
    the freed slot holds what was there before the short row (NaN here: a new buffer is not
    cleared): the move takes the mover's zeros with it, and every request gets its one-at-a-time
    tokens and logits."""
    _nan_buffers(monkeypatch)
    generator = any_generator
    monkeypatch.setattr(generator, "_spare_cache", None)
    words = iter("markets rally as the central bank holds rates and traders weigh the outlook for "
                 "growth jobs prices and bonds in a week of earnings news from banks oil firms".split() * 4)
    long_prompt = "Theme: markets"
    while generator.count_tokens(long_prompt + "\nHeadline:") < 33:  # one past a bucket: 31 masked
        long_prompt += " " + next(words)
    items = [("Theme: tax\nHeadline:", GenerationSettings(max_new_tokens=1), "short"),
             (PROMPTS[0], GenerationSettings(max_new_tokens=6), "middle"),
             (long_prompt + "\nHeadline:", GenerationSettings(max_new_tokens=6), "long")]
    batch, joined, done = generator.open_batch(), {}, {}
    batch.add(items)
    _step(batch, joined, done)
    long_row = batch._rows[2]
    while "short" not in done:
        _step(batch, joined, done)
    assert batch._rows[0] is long_row  # moved into the short row's slot
    _drain(batch, joined, done)
    _assert_alone(generator, items, done, joined)


@pytest.mark.parametrize("spare,spare_rows", [(1, 4), (32, 0)])
def test_cache_buffers_that_fill_up_are_grown(any_generator, monkeypatch, spare, spare_rows):
    """Packed batches keep their cache in a buffer with spare columns and rows. With one spare
    column a plain step finds it full every other step (its rows move back in it, or to a new
    buffer when their windows outgrow it), and with no spare row a request that joins while no
    other leaves does (a new buffer); every request still gets its one-at-a-time output."""
    from trainer import packed_attention

    monkeypatch.setattr(packed_attention, "SPARE", spare)
    monkeypatch.setattr(packed_attention, "SPARE_ROWS", spare_rows)
    monkeypatch.setattr(any_generator, "_spare_cache", None)  # (one with more room, left by another test)
    test_requests_joining_a_running_batch_get_their_own_output(any_generator)


@packed_paths
def test_a_batch_out_of_columns_moves_its_rows_back_in_its_buffer(any_generator, monkeypatch):
    """With 4 spare columns, requests decoding 9 tokens run out of columns every 4 steps: the
    rows' keys move back in the same buffer (no new one is made), and each request gets its
    one-at-a-time tokens and logits."""
    from trainer import packed_attention

    monkeypatch.setattr(packed_attention, "SPARE", 4)
    generator = any_generator
    monkeypatch.setattr(generator, "_spare_cache", None)  # (one with more columns, left by another test)
    items = [(prompt, GenerationSettings(max_new_tokens=9), i) for i, prompt in enumerate(PROMPTS)]
    batch, joined, done = generator.open_batch(), {}, {}
    batch.add(items)
    _step(batch, joined, done)
    buffer, ends = batch._cache, [batch._end]
    while len(batch):
        _step(batch, joined, done)
        if len(batch):
            assert batch._cache is buffer
            ends.append(batch._end)
    assert sum(later < earlier for earlier, later in zip(ends, ends[1:])) >= 1, ends  # moved back
    _assert_alone(generator, items, done, joined)


@packed_paths
def test_a_new_batch_starts_in_the_buffer_of_the_last_one_that_emptied(any_generator):
    """A service answering one request at a time opens a batch per request: each starts in the
    buffer the last emptied batch left (no new buffer per request), one batch at a time
    (a batch opened while another runs gets its own), and gets its one-at-a-time output."""
    generator = any_generator
    first = generator.open_batch()
    first.add([(PROMPTS[0], GenerationSettings(max_new_tokens=3), "first")])
    first.step()
    buffer = first._cache
    other = generator.open_batch()  # while the first runs: a buffer of its own
    other.add([(PROMPTS[2], GenerationSettings(max_new_tokens=2), "other")])
    other.step()
    assert other._cache is not buffer
    done, joined = {}, {}
    _drain(first, {}, done)
    _drain(other, {}, done)
    assert first._cache is None and generator._spare_cache is not None
    items = [(PROMPTS[1], GenerationSettings(max_new_tokens=5), "next")]
    batch = generator.open_batch()
    batch.add(items)
    spare = generator._spare_cache
    _step(batch, joined, done)
    assert batch._cache is spare and generator._spare_cache is None
    _drain(batch, joined, done)
    _assert_alone(generator, items, done, joined)


@packed_paths
def test_a_longer_prompt_widens_the_batch_in_place(any_generator):
    """A prompt longer than the batch's cached width joins into the same buffer when the columns
    before the rows' keys are free (a longer row left, and its padding was dropped), and gets its
    one-at-a-time tokens and logits."""
    generator = any_generator
    short, long_prompt = "Theme: tax\nHeadline:", "Category: sport\nTheme: cup final penalty\nHeadline:"
    items = [(long_prompt, GenerationSettings(max_new_tokens=1), "leaves"),
             (short, GenerationSettings(max_new_tokens=8), "short"),
             (long_prompt, GenerationSettings(max_new_tokens=4), "long")]
    batch, joined, done = generator.open_batch(), {}, {}
    batch.add(items[:2])
    while "leaves" not in done:
        _step(batch, joined, done)
    assert batch.rows == 1 and _width(batch) < generator.count_tokens(long_prompt) <= batch._end + 1
    buffer = batch._cache
    batch.add(items[2:])
    _step(batch, joined, done)
    assert batch._cache is buffer and batch.rows == 2
    _drain(batch, joined, done)
    _assert_alone(generator, items, done, joined)


@packed_paths
def test_a_prompt_joining_as_every_row_leaves_reuses_the_buffer(any_generator):
    """A prompt added before a step in which every decoding row ends runs in that step's model
    call, in the buffer the batch had, and gets its one-at-a-time tokens and logits."""
    generator = any_generator
    items = [(PROMPTS[0], GenerationSettings(max_new_tokens=1), "first"),
             (PROMPTS[1], GenerationSettings(max_new_tokens=5), "next")]
    batch, joined, done = generator.open_batch(), {}, {}
    batch.add(items[:1])
    batch.step()  # its prompt: it ends at the next step's pick, its one token chosen
    buffer = batch._cache
    batch.add(items[1:])
    _step(batch, joined, done)
    assert "first" in done and batch.rows == 1 and batch._cache is buffer
    _drain(batch, joined, done)
    _assert_alone(generator, items, done, joined)


@packed_paths
def test_a_request_joining_as_another_leaves_is_written_in_place(any_generator):
    """Under steady load a step in which a request leaves and another joins writes the new
    prompt's keys into the buffer the batch has (a free slot, the rows that stay in theirs),
    instead of copying the whole cache into a new one; the last row moves into the slot the
    leaving one freed, and every request gets its one-at-a-time tokens and logits."""
    generator = any_generator
    items = [(prompt, GenerationSettings(max_new_tokens=n), i)
             for i, (prompt, n) in enumerate(zip(PROMPTS, (3, 9, 9)))]
    items.append(("Theme: tax\nHeadline:", GenerationSettings(max_new_tokens=4), "next"))
    batch, joined, done = generator.open_batch(), {}, {}
    batch.add(items[:3])
    done.update(batch.step())
    buffer, rows_before = batch._cache, list(batch._rows)
    assert generator.count_tokens(items[3][0]) <= _width(batch)  # it fits beside the others

    def refill(finished):
        batch.add(items[3:])

    while 0 not in done:
        _step(batch, joined, done, refill=refill)
    assert batch._cache is buffer and batch.rows == 3
    # Row 0 left: row 2 took its slot, row 1 kept its own, and the new request is row 2.
    assert batch._rows[:2] == [rows_before[2], rows_before[1]]
    _drain(batch, joined, done)
    _assert_alone(generator, items, done, joined)


def _width(batch) -> int:
    """Cached positions per row (left padding included)."""
    return batch._t["attention"].shape[1] if batch._t else 0


def test_cache_stays_as_wide_as_its_rows_under_steady_load(any_generator):
    """A batch that never empties (a request joins at every step) must not grow its cache
    forever: padding that no remaining row needs is dropped when rows leave."""
    generator = any_generator
    batch, widths, seen, joined, done = generator.open_batch(), [], [], {}, {}
    prompts = [PROMPTS[1], PROMPTS[0], "Theme: tax\nHeadline:"]
    items = [(prompts[i % 3], GenerationSettings(max_new_tokens=4 + i % 3), i) for i in range(40)]
    for item in items:
        batch.add([item])
        _step(batch, joined, done)
        widths.append(_width(batch))
        seen.append(batch._t["seen"].shape[1] if batch._t else 0)
    _drain(batch, joined, done)
    longest = max(generator.count_tokens(p) for p in prompts) + 6 + 1
    assert max(widths) <= longest, widths
    assert max(seen) <= longest, seen  # the seen-token ids of the repetition penalty likewise
    assert sorted(done) == list(range(40))
    # Rows moved between slots, columns dropped, prompts joining in place: every request's
    # tokens and logits are still its one-at-a-time run's.
    _assert_alone(generator, items, done, joined)


@contextmanager
def _short_and_long(generator, long_tokens: int):
    """A batch decoding "short" (2 tokens at most) and "long" (``long_tokens``), and a list that
    gets one entry per model call while the block runs."""
    model_calls = []
    hook = generator.model.register_forward_hook(lambda *args: model_calls.append(1))
    try:
        batch = generator.open_batch()
        batch.add([(PROMPTS[0], GenerationSettings(max_new_tokens=2), "short"),
                   (PROMPTS[1], GenerationSettings(max_new_tokens=long_tokens), "long")])
        yield batch, model_calls
    finally:
        hook.remove()


def test_step_reports_finished_requests_before_its_model_call(any_generator):
    """A request is answered when its last token is chosen, not after the model call that the
    rows still decoding need: on_done hears of it first, and of exactly what step returns."""
    with _short_and_long(any_generator, 6) as (batch, model_calls):
        heard = {}
        while len(batch):
            calls_before, step_heard = len(model_calls), []

            def on_done(tag, result, step_heard=step_heard, calls_before=calls_before):
                step_heard.append((tag, result, len(model_calls) - calls_before))

            returned = batch.step(on_done=on_done)
            assert [(tag, result) for tag, result, _ in step_heard] == returned
            for tag, _, calls in step_heard:
                heard[tag] = calls
                assert calls == 0, f"{tag} was answered after the step's model call"
            if "short" in [tag for tag, _, _ in step_heard]:
                assert len(model_calls) - calls_before == 1  # the long request went on in this step
    assert set(heard) == {"short", "long"}


def test_refill_adds_requests_to_the_model_call_of_the_step_they_were_added_in(any_generator):
    """step(refill=...): when a request finishes and others go on, what refill adds runs in that
    step's model call (packed batches), and gets exactly its one-at-a-time output."""
    generator = any_generator
    follow_up = (PROMPTS[2], GenerationSettings(max_new_tokens=4, repetition_penalty=1.3), "next")
    with _short_and_long(generator, 8) as (batch, model_calls):
        refills, done = [], {}

        def refill(finished):
            refills.append((finished, batch.rows))
            batch.add([follow_up])

        while "short" not in done:
            calls_before = len(model_calls)
            done.update(batch.step(refill=None if refills else refill))
        if batch.joins_mid_step:
            # Called once, for the one request that finished, with the long one still decoding;
            # the follow-up ran in that step's one model call: it is decoding, not waiting.
            assert refills == [(1, 1)]
            assert len(model_calls) - calls_before == 1 and batch.rows == 2 and not batch._pending
        else:  # the general path prefills on add(): no joining between its pick and model call
            assert refills == [] and not generator._packed
            batch.add([follow_up])
        while len(batch):
            done.update(batch.step())
    alone = generator.generate([follow_up[0]], follow_up[1])[0]
    assert done["next"].texts == alone.texts and done["next"].completion_tokens == alone.completion_tokens
    assert set(done) == {"short", "long", "next"}


def test_packed_prompt_with_several_headlines_runs_once(generator):
    """A request for n headlines puts its prompt in the packed step once, not n times."""
    gen = generator
    ids = gen.tokenizer(PROMPTS[0])["input_ids"]
    lead = gen._lead(ids)  # computed here if no test before did: the step below feeds the rest
    fed = []
    hook = gen.model.get_input_embeddings().register_forward_hook(lambda m, i, o: fed.append(i[0].numel()))
    try:
        out = gen.generate([PROMPTS[0]], GenerationSettings(num_return=3, max_new_tokens=1))[0]
    finally:
        hook.remove()
    assert len(out.texts) == 3
    assert lead is not None and fed[0] == len(ids) - lead.shape[4]


def test_template_leads_are_computed_once_and_change_nothing(any_generator):
    """The words a template starts with ("Theme:", "Category:", "Article:") are run once per
    Generator; prompts that start with them feed only the rest, and get the tokens and, at every
    step, the logits they get when each prompt is run whole."""
    gen = any_generator
    assert not gen._packed or {gen.tokenizer.decode(lead) for lead in gen._leads} == {"Theme:", "Category:", "Article:"}
    items = [(p, GenerationSettings(max_new_tokens=6, repetition_penalty=1.3), i) for i, p in enumerate(PROMPTS)]
    items.append(("Headlines: no template lead here", GenerationSettings(max_new_tokens=4), "raw"))
    items.append(("Theme:", GenerationSettings(max_new_tokens=4), "lead only"))  # nothing left to feed

    def run(leads):
        gen._leads, saved = leads, gen._leads
        log, done = {}, {}
        try:
            batch = gen.open_batch()
            batch.add(items[:2])
            _trace(batch, log)
            done.update(batch.step())
            batch.add(items[2:])  # joining a running batch, with and without a lead
            while len(batch):
                _trace(batch, log)
                done.update(batch.step())
        finally:
            gen._leads = saved
        return log, done

    gen._lead_kv.clear()
    with_leads, done = run(gen._leads)
    assert len(gen._lead_kv) == (2 if gen._packed else 0)  # "Theme:" and "Category:", once each
    whole, done_whole = run(())
    assert {tag: r.texts for tag, r in done.items()} == {tag: r.texts for tag, r in done_whole.items()}
    assert with_leads.keys() == whole.keys()
    for key, logits in whole.items():
        assert torch.allclose(with_leads[key], logits, atol=1e-4), key


def test_template_leads_come_from_the_configured_templates(generator):
    from trainer.generation import _template_leads

    prompt_cfg = load_config().prompt.model_copy(update={
        "theme_template": "{{Brief}} Topic: {theme}\nHeadline:", "article_template": "{article}\nHeadline:"})
    leads = {generator.tokenizer.decode(lead) for lead in _template_leads(generator.tokenizer, prompt_cfg)}
    assert leads == {"{Brief} Topic:", "Category:"}  # literal braces unescaped; no lead before {article}


@pytest.mark.parametrize("extreme", [{"top_p": 5e-324}, {"top_p": 1e-30, "temperature": 5.0},
                                     {"temperature": 5e-324}, {"temperature": 1e-30, "top_k": 1}])
def test_sampling_at_the_edges_of_the_valid_ranges(any_generator, extreme):
    """Any top_p and temperature > 0 is valid input: the smallest sample (no 500 from an empty or
    NaN distribution), repeatably with a seed; a top_p too small for any second token is greedy."""
    generator = any_generator
    settings = GenerationSettings(do_sample=True, seed=465, repetition_penalty=2.5, max_new_tokens=6, **extreme)
    first = generator.generate(PROMPTS, settings)
    assert [r.texts for r in first] == [r.texts for r in generator.generate(PROMPTS, settings)]
    if extreme.get("top_p", 1) < 1e-20 or extreme.get("top_k") == 1:
        greedy = generator.generate(PROMPTS, GenerationSettings(repetition_penalty=2.5, max_new_tokens=6))
        assert [r.texts for r in first] == [r.texts for r in greedy]


def test_seeds_repeat_and_differ(generator):
    s = GenerationSettings(do_sample=True, seed=5, temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=8)
    first = generator.generate([PROMPTS[0]], s)[0].texts
    assert generator.generate([PROMPTS[0]], s)[0].texts == first
    other = generator.generate([PROMPTS[0]], GenerationSettings(**{**s.__dict__, "seed": 6}))[0].texts
    assert other != first


def test_max_new_tokens_bounds_each_row(generator):
    out = generator.generate(PROMPTS[:2], [GenerationSettings(max_new_tokens=3),
                                            GenerationSettings(max_new_tokens=7)])
    assert out[0].completion_tokens <= 3 and out[1].completion_tokens <= 7
    assert out[0].prompt_tokens == generator.count_tokens(PROMPTS[0])


def test_stops_at_eos_and_newline(generator):
    """Make EOS the only likely token after the prompt: decoding must stop at once."""
    import torch

    model = generator.model
    eos = generator.tokenizer.eos_token_id
    with torch.no_grad():
        saved = model.lm_head.weight.clone()
        bias = torch.zeros(model.config.vocab_size)
        bias[eos] = 100.0
        hook = model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        out = generator.generate([PROMPTS[0]], GenerationSettings(max_new_tokens=10))[0]
    finally:
        hook.remove()
        model.lm_head.weight.data.copy_(saved)
    assert out.texts == [""] and out.finished == [True] and out.completion_tokens == 0


def test_greedy_with_several_headlines_samples_deterministically(generator):
    s = GenerationSettings(num_return=3, max_new_tokens=6)
    assert s.deterministic and s.effective().do_sample and s.effective().seed == 0
    a = generator.generate([PROMPTS[0]], s)[0].texts
    assert a == generator.generate([PROMPTS[0]], s)[0].texts
    assert not GenerationSettings(do_sample=True).deterministic


def test_settings_from_config_and_overrides():
    cfg = load_config()
    s = GenerationSettings.from_config(cfg.generation, temperature=0.3, seed=None)
    assert s.temperature == 0.3
    assert s.max_new_tokens == cfg.generation.max_new_tokens
    assert s.num_return == cfg.generation.num_headlines
    assert s.repetition_penalty == cfg.generation.repetition_penalty


@pytest.mark.parametrize(
    "raw, clean",
    [(" Oil prices hit record\nContext: more", "Oil prices hit record"),
     ('  "Quoted   headline" ', "Quoted headline"),
     ("\n", ""),
     ("Plain", "Plain")],
)
def test_postprocess(raw, clean):
    assert postprocess(raw) == clean


def test_load_run_folder_and_missing_latest(tmp_path, tiny_model_dir):
    import shutil

    cfg = load_config()
    run = tmp_path / "runs" / "20260101-000000-test"
    shutil.copytree(tiny_model_dir, run / "model")
    (run / "run.json").write_text(json.dumps({"run_id": run.name, "version": "abc123abc123",
                                              "base_model": "tiny", "status": "finished"}))
    (run / "eval.json").write_text(json.dumps({"fine_tuned": {"rouge1": 0.3}}))
    (tmp_path / "runs" / "latest").symlink_to(run.name)
    gen = Generator.load(str(tmp_path / "runs" / "latest"), cfg)
    assert gen.info == {"name": "tiny", "run": run.name, "version": "abc123abc123"}
    assert gen.eval_scores["fine_tuned"]["rouge1"] == 0.3
    with pytest.raises(TrainerError, match="no finished run"):
        Generator.load(str(tmp_path / "other" / "latest"), cfg)
    gen = Generator.load(str(tiny_model_dir), cfg)
    assert gen.info["run"] is None and len(gen.info["version"]) == 12


def test_a_run_is_served_with_the_prompt_templates_it_was_trained_with(tmp_path, tiny_model_dir):
    """config.yml may have changed since the run was trained: the run's own config.yml says
    which prompts its model answers; the base model keeps today's."""
    import shutil

    from trainer import runs

    trained = load_config(None, ['prompt.theme_template="Old style: {theme}\\nHeadline:"'])
    today = load_config(None, ['prompt.theme_template="News headline about {theme}:"'])
    run = tmp_path / "20260101-000000-test"
    shutil.copytree(tiny_model_dir, run / "model")
    (run / "run.json").write_text(json.dumps({"run_id": run.name, "version": "abc123abc123",
                                              "base_model": "tiny", "status": "finished"}))
    (run / runs.CONFIG_YML).write_text(runs.config_yaml(trained))
    gen = Generator.load(str(run), today)
    assert gen.prompt(theme="oil") == "Old style: oil\nHeadline:"
    assert gen.cfg.prompt == trained.prompt and gen.cfg.generation == today.generation
    assert Generator.load(str(tiny_model_dir), today).prompt(theme="oil") == "News headline about oil:"
    # A key that today's schema no longer knows, outside the prompt section: still served.
    saved = runs.config_yaml(trained).replace("train:\n", "train:\n  retired_option: 1\n", 1)
    (run / runs.CONFIG_YML).write_text(saved)
    with pytest.raises(ConfigError, match="train.retired_option: unknown key"):
        load_config(run / runs.CONFIG_YML)
    assert Generator.load(str(run), today).prompt(theme="oil") == "Old style: oil\nHeadline:"
    # Its own templates broken: an error naming the file and the key, not today's templates.
    (run / runs.CONFIG_YML).write_text(saved.replace("Old style: {theme}", "Old style: {topic}"))
    with pytest.raises(ConfigError, match=r"config\.yml: prompt\.theme_template: must contain \{theme\}"):
        Generator.load(str(run), today)
    (run / runs.CONFIG_YML).unlink()  # a run folder without its config: today's templates
    assert Generator.load(str(run), today).prompt(theme="oil") == "News headline about oil:"


def test_float16_layers_whose_packing_has_not_started_are_packed_at_install(tiny_llama_dir):
    """install_float16 does not wait for the files' pool to reach a layer: a packing not started
    yet is cancelled and done at install, from the model's (equal) weight, on every core."""
    from concurrent.futures import Future

    from trainer import cpu_linear

    started = cpu_linear.prepack_float16(tiny_llama_dir)
    for future in started.values():
        future.result()
    queued = {name: Future() for name in started}  # still waiting in the pool's queue: never run
    model, _ = load_model_and_tokenizer(str(tiny_llama_dir))
    reference, _ = load_model_and_tokenizer(str(tiny_llama_dir))
    waiting = list(queued.values())
    assert cpu_linear.install_float16(model, queued)  # returns: nothing waited for the queued ones
    assert waiting and all(future.cancelled() for future in waiting)
    assert queued == {}  # consumed: its futures (float32 copies of the weights) are let go
    assert cpu_linear.install_float16(reference, started)
    assert started == {}
    x = torch.randn(3, model.config.hidden_size)
    with torch.inference_mode():
        for mine, theirs in zip(model.model.layers, reference.model.layers):
            assert torch.equal(mine.mlp.up_proj(x), theirs.mlp.up_proj(x))
            assert torch.equal(mine.self_attn.k_proj(x), theirs.self_attn.k_proj(x))


def test_float16_packed_from_the_files_while_the_model_loads(tmp_path, tiny_llama_dir, monkeypatch):
    """Generator.load packs float16 weights from the run's files while transformers loads; a layer
    whose weight differs from its file is packed again from the model, never served stale."""
    import shutil

    from trainer import cpu_linear

    prepacked = cpu_linear.prepack_float16(tiny_llama_dir)
    for future in prepacked.values():
        future.result()
    model, _ = load_model_and_tokenizer(str(tiny_llama_dir))
    layer = model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        layer.weight.mul_(2)
    packed_again = []
    real = cpu_linear._pack_float16
    monkeypatch.setattr(cpu_linear, "_pack_float16", lambda *a, **k: packed_again.append(a) or real(*a, **k))
    assert cpu_linear.install_float16(model, prepacked)
    assert len(packed_again) == 1  # every other layer (the tied LM head included) came from the files
    x = torch.randn(3, layer.in_features)
    with torch.inference_mode():
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight), rtol=1e-2, atol=1e-3)
    monkeypatch.undo()

    run = tmp_path / "runs" / "20260101-000000-fp16"
    shutil.copytree(tiny_llama_dir, run / "model")
    (run / "run.json").write_text(json.dumps({"run_id": run.name, "version": "fp16fp16fp16",
                                              "base_model": "tiny-llama", "status": "finished"}))
    gen = Generator.load(str(run), load_config(), weights="float16")
    exact = Generator.load(str(run), load_config())
    assert (gen.weights, exact.weights) == ("float16", "float32")
    s = GenerationSettings(max_new_tokens=6)
    assert gen.generate(PROMPTS, s)[0].prompt_tokens == exact.generate(PROMPTS, s)[0].prompt_tokens
