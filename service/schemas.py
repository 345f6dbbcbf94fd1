"""Marshmallow schemas of the API: request validation and the OpenAPI document.

Limits and defaults come from config.yml (``service`` and ``generation``), so
the schemas are built per app by ``make_schemas``; the OpenAPI document then
shows the limits (maxLength, minimum/maximum) and defaults that are enforced.
Unknown fields are refused with 422 naming them (marshmallow's RAISE); integers are
strict (1.5 or "5" is a 422, not silently 1 or 5); text fields refuse control and invisible
formatting characters and lone surrogates (``_plain_text``).
"""

from __future__ import annotations

import math
import re
import sys
import unicodedata
from types import SimpleNamespace

import marshmallow as ma
from marshmallow import ValidationError, fields, validate, validates_schema

from config import Config

CATEGORY_MAX_CHARS = 64


def normalize_text(text: str) -> str:
    """NFC, whitespace runs to one space, trimmed: how the trainer cleaned its data (and the cache key)."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("must not be empty or only whitespace")


# Refused in text fields: C0/C1 controls other than tab, newline and carriage return (NUL, the
# ESC of terminal escape sequences that would reach logs), lone surrogates (JSON allows "\ud800";
# such text cannot be encoded as UTF-8, so the tokenizer fails on it), and Unicode format
# characters (Cf): bidi overrides that make logs and UIs show other text than was sent, and
# zero-width or tag characters that hide text from a reader. ZWNJ and ZWJ are kept: spelling
# in several scripts and emoji sequences need them. Built once from this Python's Unicode tables.
_ALLOWED_CONTROLS = frozenset("\t\n\r\u200c\u200d")


def _refused_pattern() -> re.Pattern[str]:
    refused = [chr(c) for c in range(sys.maxunicode + 1)
               if unicodedata.category(chr(c)) in ("Cc", "Cf") and chr(c) not in _ALLOWED_CONTROLS]
    return re.compile("[" + "".join(re.escape(ch) for ch in refused) + "\ud800-\udfff]")


_REFUSED_CHARS = _refused_pattern()


def _plain_text(value: str) -> None:
    """Refuse what _REFUSED_CHARS matches, naming the character by code point (never echoing it)."""
    found = _REFUSED_CHARS.search(value)
    if found is None:
        return
    ch, at = found.group(), found.start()
    if "\ud800" <= ch <= "\udfff":
        raise ValidationError(f"not valid Unicode: a lone surrogate U+{ord(ch):04X} at character {at} "
                              "cannot be encoded as UTF-8")
    raise ValidationError(f"contains the control or invisible formatting character U+{ord(ch):04X} at "
                          f"character {at}; of the control characters only tab and newline are allowed")


class ErrorSchema(ma.Schema):
    """The one error shape of every non-2xx answer (flask-smorest's)."""

    code = fields.Integer(required=True, metadata={"description": "HTTP status code", "example": 422})
    status = fields.String(required=True, metadata={"description": "HTTP status name",
                                                    "example": "Unprocessable Entity"})
    message = fields.String(metadata={"description": "What went wrong, for a human"})
    errors = fields.Dict(metadata={
        "description": "Per location and field, the list of problems: {\"json\": {\"field\": [\"...\"]}}",
        "example": {"json": {"max_len": ["Must be greater than or equal to 1 and less than or equal to 64."]}},
    })


class ModelInfoSchema(ma.Schema):
    name = fields.String(allow_none=True, metadata={"description": "Base model the run started from",
                                                    "example": "smollm2-135m-instruct"})
    run = fields.String(allow_none=True, metadata={"description": "Run id (null for a base model)",
                                                   "example": "20260101-120000-headline"})
    version = fields.String(allow_none=True, metadata={"description": "12 hex of the weights' sha256",
                                                       "example": "3f2a9c0d81be"})


class UsageSchema(ma.Schema):
    prompt_tokens = fields.Integer(metadata={"description": "Tokens in the prompt", "example": 9})
    completion_tokens = fields.Integer(metadata={"description": "Tokens generated (all headlines)",
                                                 "example": 11})


class HeadlinesResponseSchema(ma.Schema):
    headlines = fields.List(fields.String(), metadata={
        "description": "n headlines", "example": ["Oil prices climb as supply fears grow"]})
    model = fields.Nested(ModelInfoSchema, metadata={"description": "The model that wrote them"})
    cached = fields.Boolean(metadata={"description": "True when served from the cache (X-Cache: HIT)"})
    usage = fields.Nested(UsageSchema)


class PromptResponseSchema(ma.Schema):
    response = fields.String(metadata={"description": "The headline",
                                       "example": "Oil prices climb as supply fears grow"})


class ModelsResponseSchema(ma.Schema):
    model = fields.Nested(ModelInfoSchema)
    source = fields.String(metadata={"description": "service.model (or HEADLINE_MODEL): what was loaded",
                                     "example": "runs/latest"})
    run_dir = fields.String(allow_none=True, metadata={"description": "Resolved run folder, if any"})
    state = fields.String(metadata={"description": "loading | ready | failed", "example": "ready"})
    loaded_at = fields.Float(allow_none=True, metadata={"description": "Unix time the model became ready"})
    load_seconds = fields.Float(allow_none=True, metadata={"description": "Load + warm-up time, seconds"})
    eval = fields.Dict(allow_none=True, metadata={
        "description": "The run's eval.json (scores of the fine-tuned model, and of the base model "
                       "when compared); null when the run was not evaluated"})


class HealthSchema(ma.Schema):
    status = fields.String(metadata={"example": "ok"})


class ReadySchema(ma.Schema):
    status = fields.String(metadata={"description": "ready, or degraded (serving, but Redis unavailable: "
                                                    "answers are not cached)", "example": "ready"})
    model = fields.Nested(ModelInfoSchema)
    redis = fields.String(metadata={"description": "ok | unavailable | disabled", "example": "ok"})
    batching = fields.Dict(metadata={"description": "Batching settings (continuous batching) and queue depth"})


def _fast_text(value, limit: int) -> bool:
    """What a text field's validators accept (1 to ``limit`` characters, not blank, no refused
    characters), for a fast_load: True only for a string they all accept."""
    return (type(value) is str and 1 <= len(value) <= limit and not value.isspace()
            and _REFUSED_CHARS.search(value) is None)


def make_schemas(cfg: Config) -> SimpleNamespace:
    """Request schemas with this config's limits and defaults."""
    svc, gen = cfg.service, cfg.generation
    max_tokens = validate.Range(min=1, max=svc.max_new_tokens_limit)

    class PromptRequestSchema(ma.Schema):
        """The original contract: a theme in, one headline out."""

        prompt = fields.String(required=True, validate=[validate.Length(min=1, max=svc.max_prompt_chars),
                                                        _not_blank, _plain_text],
                               metadata={"description": f"The theme of the headline (1-{svc.max_prompt_chars} "
                                                        "characters)", "example": "oil price"})
        max_len = fields.Integer(strict=True, load_default=gen.max_new_tokens, validate=max_tokens,
                                 metadata={"description": f"Most tokens generated (1-{svc.max_new_tokens_limit})",
                                           "example": 50})

        @staticmethod
        def fast_load(data):
            """``load(data)`` for the usual valid body, or None to let ``load`` decide.

            Checks exactly what the fields above check, for the one shape every client of the
            original contract sends (both fields, a string and an int), without marshmallow's
            per-field machinery, which is a tenth of a cache hit's time. Anything else (a
            missing field, a default to fill, any invalid value) goes through ``load``, which
            also writes the error messages. tests/service/test_fast_load.py checks that both
            agree on every input where this returns a value.
            """
            if type(data) is not dict or len(data) != 2:
                return None
            prompt, max_len = data.get("prompt"), data.get("max_len")
            if (type(max_len) is int and 1 <= max_len <= svc.max_new_tokens_limit
                    and _fast_text(prompt, svc.max_prompt_chars)):
                return {"prompt": prompt, "max_len": max_len}
            return None

    class HeadlinesRequestSchema(ma.Schema):
        """Exactly one of theme or article; every other field has the config.yml default."""

        theme = fields.String(validate=[validate.Length(min=1, max=svc.max_prompt_chars), _not_blank,
                                        _plain_text],
                              metadata={"description": "A short theme (or give article)",
                                        "example": "oil price"})
        article = fields.String(validate=[validate.Length(min=1, max=svc.max_article_chars), _not_blank,
                                          _plain_text],
                                metadata={"description": "An article body to title (or give theme); it is "
                                                         "cut to prompt.article_max_tokens tokens"})
        category = fields.String(load_default=None, allow_none=True,
                                 validate=[validate.Length(min=1, max=CATEGORY_MAX_CHARS), _not_blank,
                                           _plain_text],
                                 metadata={"description": "Optional category, e.g. business",
                                           "example": "business"})
        n = fields.Integer(strict=True, load_default=gen.num_headlines, validate=validate.Range(min=1, max=10),
                           metadata={"description": "Headlines to return (1-10); n > 1 samples, with seed 0 "
                                                    "when no seed is given"})
        max_new_tokens = fields.Integer(strict=True, load_default=gen.max_new_tokens, validate=max_tokens,
                                        metadata={"description": f"Most tokens per headline "
                                                                 f"(1-{svc.max_new_tokens_limit})"})
        do_sample = fields.Boolean(load_default=gen.do_sample, metadata={
            "description": "false = greedy (deterministic, cached); true = sample with the settings below"})
        temperature = fields.Float(load_default=gen.temperature,
                                   validate=validate.Range(min=0, max=5, min_inclusive=False),
                                   metadata={"description": "Sampling temperature (0-5], lower = safer"})
        top_p = fields.Float(load_default=gen.top_p, validate=validate.Range(min=0, max=1, min_inclusive=False),
                             metadata={"description": "Nucleus sampling mass (0-1]"})
        top_k = fields.Integer(strict=True, load_default=gen.top_k, validate=validate.Range(min=0, max=1000),
                               metadata={"description": "Keep the k most likely tokens (0 = no limit)"})
        repetition_penalty = fields.Float(load_default=gen.repetition_penalty,
                                          validate=validate.Range(min=1, max=5),
                                          metadata={"description": "Penalty on repeated tokens [1-5]"})
        seed = fields.Integer(strict=True, load_default=gen.seed, allow_none=True,
                              validate=validate.Range(min=0, max=2**63 - 1),
                              metadata={"description": "Sampling seed: repeatable and cacheable output "
                                                       "(null = random, not cached)"})

        @validates_schema
        def _one_input(self, data, **kwargs):
            if ("theme" in data) == ("article" in data):
                field = "article" if "theme" in data else "theme"
                raise ValidationError("give exactly one of theme or article", field)

        @staticmethod
        def fast_load(data):
            """``load(data)`` for the usual valid bodies, or None to let ``load`` decide.

            Takes what the fields above take in plain JSON types (text as strings, integers as
            ints, numbers as ints or floats, do_sample as a boolean, category and seed also as
            null) and fills the defaults in as ``load`` does; a default is checked like a given
            value (``load`` does not check defaults: one outside its field's range defers). The
            ranges and defaults are read off the fields (``_number_checks``). Anything else, valid
            or not (a number as a string, a boolean where an integer goes, an integer too large
            for a float), goes through ``load``, which also writes the error messages.
            tests/service/test_fast_load.py checks that both agree on every input where this
            returns a value.
            """
            if type(data) is not dict or not data.keys() <= known_fields or ("theme" in data) == ("article" in data):
                return None
            text, limit = ("theme", svc.max_prompt_chars) if "theme" in data else ("article", svc.max_article_chars)
            if not _fast_text(data[text], limit):
                return None
            out = {text: data[text]}
            category = data.get("category")
            if category is not None and not _fast_text(category, CATEGORY_MAX_CHARS):
                return None
            out["category"] = category
            do_sample = data.get("do_sample", gen.do_sample)
            if type(do_sample) is not bool:
                return None
            out["do_sample"] = do_sample
            for field, default, is_float, allow_none, in_range in number_checks:
                value = data.get(field, default)
                if value is None and allow_none:
                    out[field] = None
                    continue
                if type(value) is not int and not (is_float and type(value) is float):
                    return None
                if is_float:
                    try:
                        value = float(value)
                    except OverflowError:  # an integer beyond float's range: load says so (422)
                        return None
                    if not math.isfinite(value):  # json.loads takes NaN and Infinity; load refuses them
                        return None
                if not in_range(value):
                    return None
                out[field] = value
            return out

    known_fields = frozenset(HeadlinesRequestSchema._declared_fields)
    number_checks = _number_checks(HeadlinesRequestSchema)
    return SimpleNamespace(PromptRequest=PromptRequestSchema, HeadlinesRequest=HeadlinesRequestSchema)


def _number_checks(schema_class) -> list[tuple]:
    """(name, default, is_float, allow_none, in_range) of each Integer or Float field of a schema
    class, for its fast_load: ``in_range(value)`` is its ``validate.Range``, nothing else may
    validate it."""
    checks = []
    for name, field in schema_class._declared_fields.items():
        if not isinstance(field, (fields.Integer, fields.Float)):
            continue
        ranges = [v for v in field.validators if isinstance(v, validate.Range)]
        if len(ranges) != 1 or len(field.validators) != 1:
            raise TypeError(f"{schema_class.__name__}.{name}: fast_load checks one validate.Range only")
        r = ranges[0]

        def in_range(value, r=r) -> bool:
            return ((r.min is None or (value >= r.min if r.min_inclusive else value > r.min))
                    and (r.max is None or (value <= r.max if r.max_inclusive else value < r.max)))

        checks.append((name, field.load_default, isinstance(field, fields.Float), field.allow_none, in_range))
    return checks
