"""Dynamic micro-batching: concurrent requests of one worker share model calls.

Request threads (Gunicorn gthread) put a job on a queue and wait on its future.
One generation thread owns the model and runs in one of two ways:

- Continuous (``open_batch`` given, as the service does): the thread keeps one
  decoding batch (trainer.generation.DecodeBatch). Between two decoding steps it
  takes whatever jobs are queued, up to ``max_batch_size`` requests in the batch,
  and adds them; every step generates one token for every request in the batch,
  and a request is answered the moment its own rows end: when its last token is
  chosen, before the step's model call for the others, so that its client's next
  request can join one step sooner. A request arriving while
  others decode starts at the next step (tens of ms) instead of waiting for the
  whole batch to finish, so the batch stays full under steady load. When the
  batch is empty the first job waits up to ``window_ms`` for company. When
  requests finish while others go on, the step waits up to ``refill_ms``
  before its model call for as many new requests as left: a client that
  sends its next request on its answer is then in that model call, not the
  next one (``DecodeBatch.step``'s ``refill``).
- Static (only ``generate`` given): take the first job, wait up to ``window_ms``
  for more, split them into groups that run well together (``group_key``) and
  call ``generate(prompts, settings_list)`` once per group.

Either way the Generator takes one settings object per prompt (own sampling
parameters and seed) and batched output equals one-at-a-time output, so each
request gets exactly the result it would have got alone.

Only this thread touches the model: torch inference is not made thread-safe by
HF, and one thread with batches beats many threads fighting for the cores.
With batching off the same thread runs one request at a time (the honest
baseline for the benchmark).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

GenerateFn = Callable[[list[str], list[Any]], Sequence[Any]]
# open_batch() -> a batch with add([(prompt, settings, tag)]), step(on_done) (calls on_done(tag, result)
# for each request that finished), len() (requests decoding) and can_join (may take new rows now);
# see trainer.generation.DecodeBatch.
OpenBatchFn = Callable[[], Any]


class BatcherClosed(RuntimeError):
    """The batcher was shut down; no more jobs are accepted."""


@dataclass(eq=False)  # hashable by identity: the batcher keeps its jobs in a set
class _Job:
    prompt: str
    settings: Any
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


def one_group(settings: Any) -> Hashable:
    """Default grouping: any mix of settings can share a batch (the Generator takes them per prompt)."""
    return 0


class MicroBatcher:
    """A queue and one generation thread; ``submit`` blocks until the request's own result is ready."""

    def __init__(
        self,
        generate: GenerateFn,
        *,
        open_batch: OpenBatchFn | None = None,
        window_ms: float = 10.0,
        refill_ms: float = 0.0,
        max_batch_size: int = 8,
        group_key: Callable[[Any], Hashable] = one_group,
        on_batch: Callable[[int], None] | None = None,
        on_queue_wait: Callable[[float], None] | None = None,
        on_refill: Callable[[float, bool], None] | None = None,
        name: str = "headline-batcher",
    ):
        self._generate = generate
        self._open_batch = open_batch if max_batch_size > 1 else None
        self.window_s = max(0.0, window_ms) / 1000.0
        self.refill_s = max(0.0, refill_ms) / 1000.0
        self.max_batch_size = max(1, int(max_batch_size))
        self._group_key = group_key
        self._on_batch = on_batch or (lambda n: None)
        self._on_queue_wait = on_queue_wait or (lambda s: None)
        self._on_refill = on_refill or (lambda s, filled: None)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = threading.Event()
        self.batches = 0  # batches started (static) or steps decoded (continuous); read by tests
        target = self._run_continuous if self._open_batch is not None else self._run
        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._thread.start()

    # -- request side ---------------------------------------------------------
    def submit_async(self, prompt: str, settings: Any) -> Future:
        if self._closed.is_set():
            raise BatcherClosed("the generation queue is closed")
        job = _Job(prompt, settings)
        self._queue.put(job)
        return job.future

    def submit(self, prompt: str, settings: Any, timeout: float | None = None) -> Any:
        """Generate for one prompt; returns the Generator's result for it (raises its error)."""
        return self.submit_async(prompt, settings).result(timeout=timeout)

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 5.0) -> None:
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout)

    # -- generation thread ----------------------------------------------------
    def _collect(self, first: _Job) -> list[_Job]:
        jobs = [first]
        deadline = time.perf_counter() + self.window_s
        while len(jobs) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # close(): finish what we hold, then stop
                self._queue.put(None)
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            jobs = self._collect(first) if self.max_batch_size > 1 else [first]
            groups: dict[Hashable, list[_Job]] = {}
            for job in jobs:
                if job.future.set_running_or_notify_cancel():
                    groups.setdefault(self._group_key(job.settings), []).append(job)
            for group in groups.values():
                self._run_group(group)
        self._fail_queued()

    def _run_continuous(self) -> None:
        batch: Any = None
        inflight: set[_Job] = set()  # jobs in the batch, to fail them all if a step raises
        closing = False

        def answer(job: _Job, result: Any) -> None:  # a finished request, mid-step
            inflight.discard(job)
            job.future.set_result(result)

        def take(wanted: int = 0, wait_s: float = 0.0) -> list[_Job]:
            """Queued jobs, as many as the batch has room for; for the first ``wanted`` of them
            wait up to ``wait_s`` in all."""
            nonlocal closing
            jobs: list[_Job] = []
            deadline = time.perf_counter() + wait_s
            while len(inflight) + len(jobs) < self.max_batch_size:
                remaining = deadline - time.perf_counter() if len(jobs) < wanted else 0.0
                try:
                    job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:  # close(): finish the batch, take nothing new
                    closing = True
                    break
                jobs.append(job)
            return jobs

        def admit(jobs: list[_Job]) -> None:
            nonlocal batch
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if not jobs:
                return
            started = time.perf_counter()
            for job in jobs:
                self._on_queue_wait(started - job.enqueued)
            try:  # add() changes the batch only once the new prompts are taken (tokenized, or prefilled)
                if batch is None:
                    batch = self._open_batch()
                batch.add([(j.prompt, j.settings, j) for j in jobs])
            except BaseException as exc:  # noqa: BLE001 - the new requests fail, the batch goes on
                log.exception("could not add %d new requests to the batch", len(jobs))
                for job in jobs:
                    job.future.set_exception(exc)
            else:
                inflight.update(jobs)

        def refill(finished: int) -> None:
            """Requests just left a batch that goes on, mid-step. A client that sends its next
            request as soon as it has its answer is a few milliseconds away: wait up to
            ``refill_ms`` for as many new requests as left, so that they run in this step's model
            call, in the rows left free, rather than one step later."""
            if closing:
                return
            started = time.perf_counter()
            jobs = take(finished, self.refill_s)
            self._on_refill(time.perf_counter() - started,
                            len(jobs) >= finished or len(inflight) + len(jobs) >= self.max_batch_size)
            admit(jobs)

        while True:
            if not inflight:
                if closing:
                    break
                first = self._queue.get()
                if first is None:
                    break
                batch = None
                admit(self._collect(first))
            elif batch.can_join and not closing:
                admit(take())
            if not inflight:
                continue
            try:
                self._on_batch(len(inflight))
                self.batches += 1
                batch.step(on_done=answer, refill=refill if self.refill_s > 0 else None)
            except BaseException as exc:  # noqa: BLE001 - every waiting request must hear about it
                log.exception("generation failed for a batch of %d", len(inflight))
                for job in inflight:
                    job.future.set_exception(exc)
                inflight.clear()
        self._fail_queued()

    def _fail_queued(self) -> None:
        """Fail anything left so that no request thread waits forever."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(BatcherClosed("the generation queue is closed"))

    def _run_group(self, group: list[_Job]) -> None:
        start = time.perf_counter()
        for job in group:
            self._on_queue_wait(start - job.enqueued)
        self._on_batch(len(group))
        self.batches += 1
        try:
            results = self._generate([j.prompt for j in group], [j.settings for j in group])
            if len(results) != len(group):
                raise RuntimeError(f"generate returned {len(results)} results for {len(group)} prompts")
        except BaseException as exc:  # noqa: BLE001 - every waiting request must hear about it
            log.exception("generation failed for a batch of %d", len(group))
            for job in group:
                job.future.set_exception(exc)
            return
        for job, result in zip(group, results):
            job.future.set_result(result)
