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


def test_fast_load_equals_load_or_defers():
    schema = make_schemas(CFG).PromptRequest()
    answered = 0
    for body in _bodies():
        fast = schema.fast_load(body)
        try:
            full = schema.load(body)
        except (ValidationError, TypeError) as exc:
            assert fast is None, f"{body!r}: the fast path accepts what load refuses ({exc})"
            continue
        if fast is not None:
            answered += 1
            assert fast == full and type(fast["max_len"]) is type(full["max_len"]), body
    assert answered >= 10  # the valid two-field bodies above


def test_fast_load_answers_the_usual_body():
    schema = make_schemas(CFG).PromptRequest()
    assert schema.fast_load({"prompt": "oil price", "max_len": 50}) == {"prompt": "oil price", "max_len": 50}
