"""One request's way to headlines: readiness, cache, token limits, the batcher.

``Engine`` is the per-app state kept in ``app.extensions["headline"]``. The
views validate input (schemas) and call ``Engine.headlines``; everything about
how an answer is produced lives here so that both endpoints share it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from flask_smorest import abort

from config import Config
from service import metrics
from service.batching import MicroBatcher
from service.cache import BYPASS, KeyMaker, ResponseCache
from service.guards import Guard
from service.model import ModelHost
from service.schemas import normalize_text

log = logging.getLogger(__name__)

RETRY_AFTER_S = "5"
MEMO_ENTRIES = 4096  # settings and cache keys of this many recent distinct requests


@dataclass
class Answer:
    headlines: list[str]
    usage: dict[str, int]
    cached: bool
    outcome: str  # X-Cache: HIT | MISS | BYPASS


@dataclass
class Engine:
    cfg: Config
    host: ModelHost
    cache: ResponseCache | None
    batcher: MicroBatcher | None = None
    # Issue 6 plugs API keys, rate limits and the concurrency cap in here (see service.guards).
    guards: list[Guard] = field(default_factory=list)
    generation_timeout_s: float = 50.0  # below Nginx's proxy_read_timeout (60 s)
    # Per-request work on the cache-hit path is kept small: the config's generation defaults and
    # the fixed part of the cache key are computed once (see settings() and _keys()).
    _defaults: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _key_maker: tuple[str, KeyMaker] | None = field(default=None, init=False, repr=False)
    # (version, input, overrides) -> (settings, cache key) of recent requests; see headlines().
    _memo: dict[tuple, tuple[Any, str | None]] = field(default_factory=dict, init=False, repr=False)

    # -- lifecycle ---------------------------------------------------------------
    def start_batcher(self, generator: Any) -> None:
        positions = model_positions(generator)
        svc = self.cfg.service
        if positions is not None and svc.max_input_tokens + svc.max_new_tokens_limit > positions:
            log.warning("service.max_input_tokens (%d) + max_new_tokens_limit (%d) exceed the model's %d "
                        "positions: requests beyond them get 422", svc.max_input_tokens,
                        svc.max_new_tokens_limit, positions)
        b = self.cfg.service.batching
        self.batcher = MicroBatcher(
            generator.generate,
            # Continuous batching: requests join the running batch between decoding steps.
            open_batch=getattr(generator, "open_batch", None),
            # Off = one request per model call, still on the one generation thread.
            window_ms=b.window_ms if b.enabled else 0.0,
            refill_ms=b.refill_ms if b.enabled else 0.0,
            max_batch_size=b.max_batch_size if b.enabled else 1,
            on_batch=metrics.BATCH_SIZE.observe,
            on_queue_wait=metrics.QUEUE_WAIT.observe,
            on_refill=lambda seconds, filled: metrics.REFILL_WAIT.labels(
                "filled" if filled else "expired").observe(seconds),
        )

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        if self.cache is not None:
            self.cache.close()

    def require_ready(self) -> Any:
        if not self.host.ready or self.batcher is None:
            message = self.host.error or "the model is still loading; retry shortly"
            abort(503, message=message, headers={"Retry-After": RETRY_AFTER_S})
        return self.host.generator

    def settings(self, **overrides: Any) -> Any:
        """GenerationSettings.from_config(cfg.generation, **overrides), defaults read once."""
        from trainer.generation import GenerationSettings

        if self._defaults is None:
            self._defaults = vars(GenerationSettings.from_config(self.cfg.generation)).copy()
        values = self._defaults.copy()
        values.update((k, v) for k, v in overrides.items() if v is not None)
        return GenerationSettings(**values)

    def _keys(self, gen: Any, version: str) -> KeyMaker:
        """The key maker of this model version (prompt templates and setting names included:
        a change of templates changes the answers of the same weights). The templates are the
        generator's: a run is served with those it was trained with (``run_prompts``)."""
        held = self._key_maker
        if held is None or held[0] != version:
            from trainer.generation import GenerationSettings

            prompt_cfg = getattr(getattr(gen, "cfg", None), "prompt", None) or self.cfg.prompt
            fixed = {"prompt": prompt_cfg.model_dump(mode="json"),
                     "settings": [f.name for f in dataclasses.fields(GenerationSettings)]}
            held = self._key_maker = (version, KeyMaker(version, fixed))
        return held[1]

    def _prepare(self, gen: Any, theme: str | None, article: str | None, category: str | None,
                 overrides: dict[str, Any]) -> tuple[str | None, str | None, str | None, Any, str | None]:
        """The request's normalized theme, article and category, its GenerationSettings and its
        cache key (None when it is not deterministic)."""
        theme = normalize_text(theme) if theme is not None else None
        article = normalize_text(article) if article is not None else None
        category = normalize_text(category) if category else None
        version = gen.info.get("version") or "unknown"
        if getattr(gen, "weights", "float32") != "float32":  # same weights, other precision: other answers
            version = f"{version}+{gen.weights}"
        # Repeated requests (the ones a cache serves) reuse their settings and key.
        memo_key = (version, theme, article, category, tuple(overrides.items()))
        memo = self._memo.get(memo_key)
        if memo is None:
            settings = self.settings(**overrides)
            key = None
            if settings.deterministic:
                # Setting values in dataclass field order (a frozen dataclass's __dict__ keeps it).
                key = self._keys(gen, version).key([theme, article, category, list(vars(settings.effective()).values())])
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            self._memo[memo_key] = memo = (settings, key)
        return (theme, article, category, *memo)

    def serves_hits(self) -> bool:
        """Whether a cached answer can be served now: the model ready and the cache available."""
        return self.cache is not None and self.batcher is not None and self.host.ready and self.cache.available()

    def cached(self, *, theme: str | None = None, article: str | None = None,
               category: str | None = None, **overrides: Any) -> dict | None:
        """The cached answer (``{"headlines", "usage"}``) of a request, or None: the model not
        ready, the request not cacheable or not cached, or Redis unavailable (service.hitlane,
        which checks ``serves_hits`` first; ``peek`` checks the cache's availability itself)."""
        if self.cache is None or not self.host.ready:
            return None
        key = self._prepare(self.host.generator, theme, article, category, overrides)[-1]
        return self.cache.peek(key)

    # -- the one generation path -------------------------------------------------
    def headlines(self, *, theme: str | None = None, article: str | None = None,
                  category: str | None = None, field_name: str, no_cache: bool = False,
                  tokens_field: str = "max_new_tokens", **overrides: Any) -> Answer:
        """Headlines for one request. ``field_name`` is the input field named in a 422;
        ``tokens_field`` is what the request calls max_new_tokens (in its messages)."""
        gen = self.require_ready()
        theme, article, category, settings, key = self._prepare(gen, theme, article, category, overrides)

        def produce() -> dict:
            prompt = gen.prompt(theme=theme, article=article, category=category)
            tokens = gen.count_tokens(prompt)
            limit = self.cfg.service.max_input_tokens
            if tokens > limit:
                abort(422, message=f"{field_name}: the prompt is {tokens} tokens, more than {limit}",
                      errors={"json": {field_name: [f"too long: {tokens} tokens, at most {limit}"]}})
            # The prompt and every generated token need a position of the model: beyond its
            # context a model with learned positions fails (IndexError), others degrade.
            positions = model_positions(gen)
            if positions is not None and tokens + settings.max_new_tokens > positions:
                room = positions - tokens
                abort(422, message=f"{field_name}: the prompt is {tokens} tokens and {tokens_field} "
                                   f"{settings.max_new_tokens} more, beyond the model's {positions} positions",
                      errors={"json": {field_name: [
                          f"too long for the model: {tokens} prompt tokens + {settings.max_new_tokens} "
                          f"new tokens > {positions} positions; shorten it"
                          + (f" or set {tokens_field} to at most {room}" if room >= 1 else "")]}})
            try:
                result = self.batcher.submit(prompt, settings, timeout=self.generation_timeout_s)
            except concurrent.futures.TimeoutError:
                abort(503, message="generation timed out; retry", headers={"Retry-After": RETRY_AFTER_S})
            metrics.GENERATED_TOKENS.inc(result.completion_tokens)
            return {"headlines": list(result.texts),
                    "usage": {"prompt_tokens": result.prompt_tokens,
                              "completion_tokens": result.completion_tokens}}

        if self.cache is None:
            metrics.cache_event("bypass")
            value, outcome = produce(), BYPASS
        else:
            value, outcome = self.cache.get_or_generate(key, produce, read=not no_cache)
        return Answer(value["headlines"], value["usage"], outcome == "HIT", outcome)


def model_positions(generator: Any) -> int | None:
    """The model's context in tokens (its position embeddings), or None when it does not say."""
    config = getattr(getattr(generator, "model", None), "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
