"""Micro-batching: concurrent requests share model calls and each gets its own answer."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.batching import BatcherClosed, MicroBatcher
from service.schemas import normalize_text
from tests.service.conftest import CountingGenerator

REQUESTS = [
    {"theme": "oil price", "max_new_tokens": 10},
    {"theme": "cup final penalty", "category": "sport", "do_sample": True, "seed": 3, "temperature": 0.9,
     "top_k": 20, "max_new_tokens": 6},
    {"theme": "phone maker shares", "do_sample": True, "seed": 11, "top_p": 0.5, "repetition_penalty": 1.5,
     "n": 3},
    {"article": "The company said profits doubled. Shares rose.", "max_new_tokens": 8},
    {"theme": "election campaign", "do_sample": True, "seed": 2, "temperature": 1.3, "max_new_tokens": 12},
    {"theme": "film festival", "n": 2, "seed": 9},
]


def _alone(gen, cfg, req):
    """The same request generated one at a time, straight from the Generator."""
    from trainer.generation import GenerationSettings

    fields = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "seed")
    overrides = {k: req[k] for k in fields if k in req}
    overrides["num_return"] = req.get("n", cfg.generation.num_headlines)
    settings = GenerationSettings.from_config(cfg.generation, **overrides)
    prompt = gen.prompt(theme=normalize_text(req["theme"]) if "theme" in req else None,
                        article=normalize_text(req["article"]) if "article" in req else None,
                        category=req.get("category"))
    return gen.generate([prompt], [settings])[0].texts


def test_concurrent_requests_get_their_own_output(make_app, tiny_generator):
    gen = CountingGenerator(tiny_generator)
    app = make_app(gen, **{"batching.window_ms": 300, "batching.max_batch_size": 8, "cache.enabled": "false"})
    cfg = app.extensions["headline"].cfg
    barrier = threading.Barrier(len(REQUESTS))

    def one(req):
        barrier.wait()
        r = app.test_client().post("/v1/headlines", json=req)
        assert r.status_code == 200, r.get_json()
        return r.get_json()["headlines"]

    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        batched = list(pool.map(one, REQUESTS))
    assert max(gen.batch_sizes) > 1, gen.batch_sizes
    assert gen.calls < 1 + len(REQUESTS)  # warm-up + fewer model calls than requests
    for req, got in zip(REQUESTS, batched):
        assert got == _alone(tiny_generator, cfg, req), req


def test_batching_off_runs_one_at_a_time(make_app, tiny_generator):
    gen = CountingGenerator(tiny_generator)
    app = make_app(gen, **{"batching.enabled": "false", "cache.enabled": "false"})
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda req: app.test_client().post("/v1/headlines", json=req), REQUESTS[:4]))
    assert set(gen.batch_sizes) == {1}


def test_batcher_window_size_and_errors():
    calls = []

    def fake(prompts, settings):
        calls.append(list(prompts))
        if "boom" in prompts:
            raise ValueError("bad batch")
        return [f"{p}/{s}" for p, s in zip(prompts, settings)]

    waits, sizes = [], []
    b = MicroBatcher(fake, window_ms=100, max_batch_size=3, on_batch=sizes.append, on_queue_wait=waits.append)
    futures = [b.submit_async(f"p{i}", i) for i in range(5)]
    assert [f.result(5) for f in futures] == [f"p{i}/{i}" for i in range(5)]
    assert sizes == [3, 2] and len(waits) == 5 and all(w >= 0 for w in waits)
    with pytest.raises(ValueError):
        b.submit("boom", 0, timeout=5)
    assert b.submit("after", 1, timeout=5) == "after/1"  # the thread survives a failed batch
    b.close()


def test_batcher_groups():
    seen = []

    def fake(prompts, settings):
        seen.append(sorted(settings))
        time.sleep(0.01)
        return list(prompts)

    b = MicroBatcher(fake, window_ms=100, max_batch_size=8, group_key=lambda s: s >= 10)
    futures = [b.submit_async(str(i), i) for i in (1, 20, 2, 30)]
    assert [f.result(5) for f in futures] == ["1", "20", "2", "30"]
    assert sorted(seen) == [[1, 2], [20, 30]]
    b.close()


class FakeBatch:
    """A decoding batch of the DecodeBatch protocol: item (prompt, steps, tag) ends after `steps` steps."""

    joins_mid_step = True

    def __init__(self, log, joinable=True):
        self.log, self.joinable, self.items = log, joinable, {}
        self.calls = []  # the prompts in each step's model call

    def add(self, items):
        if any(p == "boom-add" for p, _, _ in items):
            raise ValueError("bad prompt")
        self.log.append(("add", sorted(p for p, _, _ in items), sorted(p for p, _, _ in self.items.values())))
        for prompt, steps, tag in items:
            self.items[id(tag)] = (prompt, steps, tag)

    def step(self, on_done, refill=None):
        done = []
        for key, (prompt, steps, tag) in list(self.items.items()):
            if steps <= 1:
                done.append((tag, f"{prompt}/done"))
                del self.items[key]
                on_done(tag, f"{prompt}/done")
            else:
                self.items[key] = (prompt, steps - 1, tag)
        if refill is not None and done and self.items:
            refill(len(done))
        self.calls.append(sorted(p for p, _, _ in self.items.values()))
        time.sleep(0.01)  # the model call, after the finished requests were answered
        if any(p == "boom-step" for p, _, _ in self.items.values()):
            raise RuntimeError("step failed")
        return done

    def __len__(self):
        return len(self.items)

    @property
    def can_join(self):
        return self.joinable or not self.items


def test_continuous_batching_joins_between_steps_and_caps_the_batch():
    log, sizes = [], []
    b = MicroBatcher(None, open_batch=lambda: FakeBatch(log), window_ms=0, max_batch_size=3,
                     on_batch=sizes.append)
    long = b.submit_async("long", 30)
    time.sleep(0.05)  # the long request is decoding now
    late = [b.submit_async(f"late{i}", 2) for i in range(4)]
    assert [f.result(5) for f in late] == [f"late{i}/done" for i in range(4)]
    assert not long.done()  # the late requests finished while the long one went on
    assert long.result(5) == "long/done"
    # The late requests joined the running batch (never more than 3 requests in it).
    joins = [entry for entry in log if "long" in entry[2]]
    assert joins and max(sizes) == 3
    assert sum(len(entry[1]) for entry in joins) == 4
    b.close()


def test_continuous_batching_errors_fail_only_their_requests():
    log = []
    b = MicroBatcher(None, open_batch=lambda: FakeBatch(log), window_ms=0, max_batch_size=8)
    running = b.submit_async("running", 20)
    time.sleep(0.03)
    with pytest.raises(ValueError):  # a failed add fails the new request only
        b.submit("boom-add", 1, timeout=5)
    assert running.result(5) == "running/done"
    victims = [b.submit_async("victim", 50)]
    time.sleep(0.03)
    victims.append(b.submit_async("boom-step", 2))
    for f in victims:  # a failed step fails every request of the batch
        with pytest.raises(RuntimeError):
            f.result(5)
    assert b.submit("after", 2, timeout=5) == "after/done"  # and the thread goes on
    b.close()


def test_continuous_batching_waits_when_the_cache_cannot_merge():
    log = []
    b = MicroBatcher(None, open_batch=lambda: FakeBatch(log, joinable=False), window_ms=0, max_batch_size=8)
    first = b.submit_async("first", 10)
    time.sleep(0.03)
    second = b.submit_async("second", 1)
    assert first.result(5) == "first/done" and second.result(5) == "second/done"
    assert [entry[2] for entry in log] == [[], []]  # each started in an empty batch
    b.close()
    with pytest.raises(BatcherClosed):
        b.submit("closed", 1, timeout=5)


@pytest.mark.parametrize("refill_ms", [0, 1000])
def test_continuous_batching_refills_the_rows_of_finished_requests(refill_ms):
    """A client that sends its next request when it gets its answer: with refill_ms, the step
    that answered waits for it, and it runs in that step's model call, not the next one's. The
    wait ends when it comes, and a step whose client sends nothing goes on after refill_ms."""
    batches = []
    b = MicroBatcher(None, open_batch=lambda: batches.append(FakeBatch([])) or batches[-1], window_ms=0,
                     refill_ms=refill_ms, max_batch_size=4)
    long = b.submit_async("long", 40)
    time.sleep(0.05)  # decoding
    first = b.submit_async("first", 2)
    assert first.result(5) == "first/done"
    started = time.perf_counter()
    assert b.submit("next", 2, timeout=5) == "next/done"  # the client's follow-up
    took = time.perf_counter() - started
    assert long.result(10) == "long/done"
    (batch,) = batches
    answered = max(i for i, call in enumerate(batch.calls) if "first" in call) + 1  # the step that answered it
    if refill_ms:
        assert batch.calls[answered] == ["long", "next"]
        assert took < refill_ms / 1000  # the step did not wait out the window: it went on once next came
    else:
        assert batch.calls[answered + 1] == ["long", "next"]
    b.close()
