"""The /prompt schema's fast path agrees with marshmallow's full load wherever it answers."""

from __future__ import annotations

from marshmallow import ValidationError

from config import load_config
from service.schemas import make_schemas

CFG = load_config()
LIMIT = CFG.service.max_new_tokens_limit
CHARS = CFG.service.max_prompt_chars

PROMPTS = ["oil price", "x", "  padded  ", " ", "", "\t\n", "a" * CHARS, "a" * (CHARS + 1), "tab\there",
           "new\nline", "nul\x00", "esc\x1b[31m", "bidi\u202eevil", "zwj\u200djoin", "lone\ud800", "Ölpreis",
           "日本", "emoji 🛢️", None, 5, 5.0, True, ["oil"], {"p": 1}]
MAX_LENS = [1, 8, LIMIT, LIMIT + 1, 0, -1, 2**70, 5.0, 1.5, "5", True, False, None, [5]]


def _bodies():
    for p in PROMPTS:
        for m in MAX_LENS:
            yield {"prompt": p, "max_len": m}
    yield {"prompt": "oil"}
    yield {"max_len": 5}
    yield {}
    yield {"prompt": "oil", "max_len": 5, "extra": 1}
    yield {"prompt": "oil", "extra": 1}
    yield ["prompt", "max_len"]
    yield "oil"
    yield None


def agreed(schema, bodies, answers=None) -> int:
    """How many of ``bodies`` the schema's fast_load answers, asserting that it equals load on each
    of them (values and types: 1 and 1.0 are equal, but a float field must be a float) and that it
    accepts nothing load refuses; with ``answers(body)``, also that it answers exactly the valid
    bodies for which that is true."""
    answered = 0
    for body in bodies:
        fast = schema.fast_load(body)
        try:
            full = schema.load(body)
        except (ValidationError, TypeError) as exc:
            assert fast is None, f"{body!r}: the fast path accepts what load refuses ({exc})"
            continue
        if answers is not None:
            assert (fast is not None) == answers(body), body
        if fast is not None:
            answered += 1
            assert fast == full, body
            assert {k: type(v) for k, v in fast.items()} == {k: type(v) for k, v in full.items()}, body
    return answered


def test_fast_load_equals_load_or_defers():
    assert agreed(make_schemas(CFG).PromptRequest(), _bodies()) >= 10  # the valid two-field bodies above


def test_fast_load_answers_the_usual_body():
    schema = make_schemas(CFG).PromptRequest()
    assert schema.fast_load({"prompt": "oil price", "max_len": 50}) == {"prompt": "oil price", "max_len": 50}


# -- POST /v1/headlines -------------------------------------------------------------------------

ARTICLE_CHARS = CFG.service.max_article_chars
# Values for each field: valid ones, edge ones on both sides, and other JSON types.
HEADLINE_VALUES = {
    "theme": ["oil price", " ", "a" * CHARS, "a" * (CHARS + 1), "esc\x1b", "lone\ud800", None, 5, ["oil"]],
    "article": ["Oil rose today.", "a" * ARTICLE_CHARS, "a" * (ARTICLE_CHARS + 1), "", "bidi\u202e", None, 1.5],
    "category": ["business", None, "", " ", "c" * 64, "c" * 65, "nul\x00", 3, True],
    "n": [1, 10, 0, 11, 2.0, True, "2", None],
    "max_new_tokens": [1, LIMIT, 0, LIMIT + 1, 8.0, False, None],
    "do_sample": [True, False, 1, 0, "true", None],
    "temperature": [0.7, 5, 5.0, 1e-9, 0, 0.0, 5.5, -1, float("nan"), float("inf"), 10**400, -10**400, "0.5",
                    True, None],
    "top_p": [1, 1.0, 0.5, 0, 1.01, float("nan"), "1", False],
    "top_k": [0, 1000, 50, -1, 1001, 5.0, True, None],
    "repetition_penalty": [1, 1.0, 5, 4.99, 0.99, 5.01, float("-inf"), 2**1024, "1.2", True, None],
    "seed": [0, 7, 2**63 - 1, 2**63, -1, None, 7.0, True, "7"],
}


def _headline_bodies():
    yield {"theme": "oil price"}
    yield {"article": "Oil rose today."}
    yield {}
    yield {"theme": "oil", "article": "Oil rose."}
    yield {"theme": "oil", "extra": 1}
    yield {"category": "business"}
    yield ["theme"]
    yield None
    for name, values in HEADLINE_VALUES.items():
        base = {"article": "Oil rose today."} if name == "theme" else {"theme": "oil price"}
        for value in values:
            yield base | {name: value}  # each value of each field, alone with a valid input
            yield {"theme": "oil price", "article": "x", name: value}
    # Every field given at once, valid.
    yield {"theme": "oil price", "category": "business", "n": 3, "max_new_tokens": 12, "do_sample": True,
           "temperature": 1, "top_p": 0.95, "top_k": 0, "repetition_penalty": 1.1, "seed": 11}


NUMBERS = {"n", "max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed"}


def _plain(body: dict) -> bool:
    """Whether a body that ``load`` accepts is in the types the fast path takes (no number as a
    string, do_sample a boolean)."""
    return (type(body.get("do_sample", False)) is bool
            and not any(type(v) is str for k, v in body.items() if k in NUMBERS))


def test_headlines_fast_load_equals_load_or_defers():
    # It answers every valid body in plain types.
    assert agreed(make_schemas(CFG).HeadlinesRequest(), _headline_bodies(), answers=_plain) >= 25


def test_headlines_fast_load_fills_the_config_defaults():
    schema = make_schemas(CFG).HeadlinesRequest()
    gen = CFG.generation
    assert schema.fast_load({"theme": "oil price", "max_new_tokens": 16}) == {
        "theme": "oil price", "category": None, "n": gen.num_headlines, "max_new_tokens": 16,
        "do_sample": gen.do_sample, "temperature": gen.temperature, "top_p": gen.top_p, "top_k": gen.top_k,
        "repetition_penalty": gen.repetition_penalty, "seed": gen.seed}
