"""The model of one worker: loaded after fork, warmed up, then handed to the batcher.

``ModelHost`` owns the state that ``/readyz`` reports: ``loading`` until the
Generator is loaded and one warm-up generation has run, then ``ready``, or
``failed`` with a message (no run yet, bad path). A worker whose model failed
keeps running and answers 503 with that message instead of crash-looping
under Gunicorn.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config import Config, resolve_path

log = logging.getLogger(__name__)

LOADING, READY, FAILED = "loading", "ready", "failed"

WARMUP_THEME = "markets rally"


class ModelHost:
    """Loads a Generator (or takes one), warms it up and tracks readiness."""

    def __init__(self, cfg: Config, ref: str | None = None):
        self.cfg = cfg
        self.ref = ref or os.environ.get("HEADLINE_MODEL") or cfg.service.model
        self.state = LOADING
        self.error: str | None = None
        self.generator: Any = None
        self.loaded_at: float | None = None
        self.load_seconds: float | None = None
        self._on_ready: list[Callable[[Any], None]] = []
        self._ready = threading.Event()

    @property
    def ready(self) -> bool:
        return self.state == READY

    def on_ready(self, callback: Callable[[Any], None]) -> None:
        """Run ``callback(generator)`` once the model is ready (e.g. to start the batcher)."""
        self._on_ready.append(callback)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the model is ready or failed; True when ready."""
        self._ready.wait(timeout)
        return self.ready

    # -- loading ----------------------------------------------------------------
    def start(self, generator: Any = None, *, background: bool = False) -> None:
        """Load now (or in a thread). ``generator``: a ready Generator, or a zero-argument loader."""
        if background:
            threading.Thread(target=self._load, args=(generator,), name="headline-model-load",
                             daemon=True).start()
        else:
            self._load(generator)

    def _load(self, generator: Any) -> None:
        t0 = time.perf_counter()
        try:
            if generator is None:
                generator = self._load_generator()
            elif not hasattr(generator, "generate") and callable(generator):
                generator = generator()
            if self.cfg.service.warmup:
                self._warm_up(generator)
            for callback in self._on_ready:
                callback(generator)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and 503s, worker stays up
            log.exception("model %r failed to load", self.ref)
            self.error = f"model {self.ref!r} failed to load: {exc}"
            self.state = FAILED
            self._ready.set()
            return
        self.generator = generator
        self.loaded_at = time.time()
        self.load_seconds = time.perf_counter() - t0
        self.state = READY
        self._ready.set()
        log.info("model ready: %s (%.2fs)", generator.info, self.load_seconds)

    def _load_generator(self) -> Any:
        import torch

        from trainer.generation import Generator

        # Workers x torch threads should not exceed the cores (see service.torch_threads).
        torch.set_num_threads(self.cfg.service.torch_threads)
        log.info("loading model %r with %d torch thread(s)", self.ref, self.cfg.service.torch_threads)
        return Generator.load(self.ref, self.cfg, weights=self.cfg.service.weights)

    def _warm_up(self, generator: Any) -> None:
        from trainer.generation import GenerationSettings

        settings = GenerationSettings.from_config(self.cfg.generation, max_new_tokens=4, num_return=1,
                                                  do_sample=False)
        generator.generate([generator.prompt(theme=WARMUP_THEME)], [settings])

    # -- description ------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What /v1/models shows: the loaded model, its run and the run's eval scores."""
        gen = self.generator
        info = dict(gen.info) if gen is not None else {"name": None, "run": None, "version": None}
        run_dir = self._run_dir()
        scores = getattr(gen, "eval_scores", None) or {}
        if not scores and run_dir is not None and (run_dir / "eval.json").is_file():
            import json

            try:
                scores = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                scores = {}
        return {
            "model": info,
            "source": self.ref,
            "run_dir": str(run_dir) if run_dir else None,
            "state": self.state,
            "loaded_at": self.loaded_at,
            "load_seconds": self.load_seconds,
            "eval": scores or None,
        }

    def _run_dir(self) -> Path | None:
        try:
            path = resolve_path(self.ref).resolve()
        except OSError:
            return None
        for candidate in (path, path.parent):
            if (candidate / "run.json").is_file():
                return candidate
        return None
