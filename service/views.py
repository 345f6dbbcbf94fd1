"""The API's blueprints: one per resource, one MethodView per URL (flask-smorest).

Built per app by ``register_views`` because the request schemas carry the
config's limits and defaults. Every non-2xx answer goes through
``flask_smorest.abort`` (or an error handler) and has the one error shape.
"""

from __future__ import annotations

import json

from flask import Response, current_app, g, make_response, request
from flask.views import MethodView
from flask_smorest import Api
from flask_smorest import Blueprint as SmorestBlueprint
from webargs.flaskparser import FlaskParser, abort

from service import metrics
from service.engine import Answer, Engine
from service.hitlane import LaneRoute
from service.schemas import (
    ErrorSchema,
    HeadlinesResponseSchema,
    HealthSchema,
    ModelInfoSchema,
    ModelsResponseSchema,
    PromptResponseSchema,
    ReadySchema,
    UsageSchema,
    make_schemas,
)

# (description, example message) of each error answer, for the OpenAPI document.
_ERRORS = {
    400: ("Malformed JSON body", "The request body is not valid JSON."),
    401: ("No valid API key (only when service.auth.enabled); see WWW-Authenticate",
          "missing API key: send the header Authorization: Bearer <key>"),
    403: ("The API key lacks the scope this route needs (only when service.auth.enabled)",
          "this API key lacks the 'generate' scope needed for /prompt"),
    429: ("Per-key rate limit reached (requests or generated tokens per minute); see Retry-After",
          "rate limit: more than 60 requests per minute for this API key; retry in 12 s"),
    413: ("Body larger than service.max_body_bytes", "The data value transmitted exceeds the capacity limit."),
    422: ("Invalid input; `errors.json` names each bad field", None),
    500: ("Unexpected error; the message carries the request id to quote (no details)",
          "internal error; request id 6f1c2a"),
    503: ("Model not ready (loading or failed), generation timed out, or the worker is at "
          "service.max_concurrency; see Retry-After", "the model is still loading; retry shortly"),
}

_X_CACHE = {"X-Cache": {"description": "HIT (from Redis), MISS (generated, then stored) or BYPASS "
                                       "(not cacheable, Cache-Control: no-cache, or Redis unavailable)",
                        "schema": {"type": "string", "enum": ["HIT", "MISS", "BYPASS"]}},
            "X-Request-ID": {"description": "The request id (from Nginx or the client, else generated)",
                             "schema": {"type": "string"}}}


class JSONParser(FlaskParser):
    """webargs' Flask parser, with every way ``json.loads`` can refuse a body answered as 400.

    webargs turns only JSONDecodeError (and bad UTF-8) into 400 "Invalid JSON body."; two
    other refusals would reach the client as 500: RecursionError for deeply nested arrays or
    objects, and ValueError for an integer literal longer than Python's int-string limit.
    """

    def _raw_load_json(self, req):
        try:
            return super()._raw_load_json(req)
        except json.JSONDecodeError:
            raise  # webargs' own handling: an empty body is "missing", the rest a 400
        except RecursionError as exc:
            abort(400, exc=exc, messages={"json": ["Invalid JSON body: nested too deeply."]})
        except ValueError as exc:  # UnicodeDecodeError is turned into JSONDecodeError upstream
            abort(400, exc=exc, messages={"json": ["Invalid JSON body: a number has too many digits."
                                                   if "digits" in str(exc) else "Invalid JSON body."]})


    def _process_location_data(self, location_data, schema, req, location, unknown, validators):
        # A schema's fast_load answers the common valid body without marshmallow (schemas.py).
        fast = getattr(schema, "fast_load", None)
        if fast is not None and not validators:
            data = fast(location_data)
            if data is not None:
                return data
        return super()._process_location_data(location_data, schema, req, location, unknown, validators)


class Blueprint(SmorestBlueprint):
    ARGUMENTS_PARSER = JSONParser()


def _documented_errors(blp: Blueprint, *codes: int):
    """Decorator documenting each error code (alt_response: error schema, description, example).

    Documentation only: alt_response wraps the view in one more function per code that runs
    on every request (``current_app.ensure_sync`` + a coroutine check each), which costs the
    cache-hit path measurably. Only its ``_apidoc`` is kept; the view itself is unchanged.
    """
    def decorate(func):
        for code in codes:
            description, message = _ERRORS[code]
            example = {"code": code, "status": _status_name(code)}
            if message:
                example["message"] = message
            if code == 422:
                example["errors"] = {"json": {"max_len": ["Must be greater than or equal to 1 and "
                                                          "less than or equal to 64."]}}
            documented = blp.alt_response(code, schema=ErrorSchema, description=description,
                                          example=example)(func)
            func._apidoc = documented._apidoc
        return func
    return decorate


def _status_name(code: int) -> str:
    from http import HTTPStatus

    return HTTPStatus(code).phrase


def json_body(payload: dict) -> bytes:
    """What ``jsonify`` sends for a payload of JSON's own types (compact, sorted keys, ASCII,
    trailing newline): with ``@blp.response``, for a payload its schema has dumped, or one that
    it dumps unchanged. Also the body of service.hitlane's answers."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def _json_response(payload: dict) -> Response:
    """``json_body`` as a response, built directly: the schema dump and jsonify round cost a
    cache hit ~10%. The schema stays on the route for the OpenAPI document."""
    return Response(json_body(payload), mimetype="application/json")


def prompt_request(body: dict) -> dict:
    """``Engine.headlines``/``Engine.cached`` arguments of a valid POST /prompt body."""
    return {"theme": body["prompt"], "max_new_tokens": body["max_len"], "num_return": 1}


def prompt_payload(headlines: list[str]) -> dict:
    """The body of POST /prompt: the first headline (an empty string when there is none)."""
    return {"response": headlines[0] if headlines else ""}


def headlines_request(body: dict) -> dict:
    """``Engine.headlines``/``Engine.cached`` arguments of a valid POST /v1/headlines body."""
    return {"theme": body.get("theme"), "article": body.get("article"), "category": body.get("category"),
            "num_return": body["n"], "max_new_tokens": body["max_new_tokens"], "do_sample": body["do_sample"],
            "temperature": body["temperature"], "top_p": body["top_p"], "top_k": body["top_k"],
            "repetition_penalty": body["repetition_penalty"], "seed": body["seed"]}


def headlines_payload(headlines: list[str], usage: dict, cached: bool, info: dict) -> dict:
    """The body of POST /v1/headlines, before HeadlinesResponseSchema dumps it."""
    return {"headlines": headlines, "model": info, "cached": cached, "usage": usage}


_USAGE_FIELDS = frozenset(UsageSchema._declared_fields)
_MODEL_FIELDS = frozenset(ModelInfoSchema._declared_fields)


def _dumped(payload: dict) -> bool:
    """Whether HeadlinesResponseSchema's dump would return ``payload`` unchanged: headlines are
    strings, usage and model hold exactly their schemas' fields, as integers and strings (or None)."""
    usage, model = payload["usage"], payload["model"]
    return (type(payload["headlines"]) is list and all(type(h) is str for h in payload["headlines"])
            and type(usage) is dict and usage.keys() == _USAGE_FIELDS and all(type(v) is int for v in usage.values())
            and type(model) is dict and model.keys() == _MODEL_FIELDS
            and all(v is None or type(v) is str for v in model.values()))


def _note(answer: Answer) -> None:
    """Keep what the after-request hooks read: X-Cache, and the tokens a rate limit charges."""
    ctx_g = g._get_current_object()
    ctx_g.generated_tokens = answer.usage["completion_tokens"]
    ctx_g.x_cache = answer.outcome


def _engine() -> Engine:
    return current_app.extensions["headline"]


def _no_cache() -> bool:
    return "no-cache" in request.headers.get("Cache-Control", "").lower()


def register_views(api: Api, engine: Engine) -> dict[str, LaneRoute]:
    """Register the blueprints; returns the routes whose cache hits service.hitlane answers."""
    schemas = make_schemas(engine.cfg)
    gen_errors = (400, 401, 403, 413, 422, 429, 500, 503)

    # -- generation -------------------------------------------------------------------
    generate = Blueprint("generate", __name__, description="Write headlines")

    @generate.route("/prompt")
    class Prompt(MethodView):
        required_scope = "generate"

        @generate.arguments(schemas.PromptRequest(), example={"prompt": "oil price", "max_len": 50})
        @generate.response(200, PromptResponseSchema, headers=_X_CACHE,
                           example={"response": "Oil prices climb as supply fears grow"})
        @_documented_errors(generate, *gen_errors)
        def post(self, body):
            """One headline for a theme (the original contract)

            `prompt` is the theme, `max_len` bounds the generated tokens. Other generation
            settings are config.yml's `generation` section. Send `Cache-Control: no-cache`
            to skip the cache.
            """
            answer = _engine().headlines(**prompt_request(body), field_name="prompt", no_cache=_no_cache(),
                                         tokens_field="max_len")
            _note(answer)
            return _json_response(prompt_payload(answer.headlines))

    @generate.route("/v1/headlines")
    class Headlines(MethodView):
        required_scope = "generate"

        @generate.arguments(schemas.HeadlinesRequest(), example={"theme": "oil price", "category": "business",
                                                               "n": 2, "seed": 7})
        @generate.response(200, HeadlinesResponseSchema, headers=_X_CACHE, example={
            "headlines": ["Oil prices climb as supply fears grow", "Oil jumps to a two-year high"],
            "model": {"name": "smollm2-135m-instruct", "run": "20260101-120000-headline",
                      "version": "3f2a9c0d81be"},
            "cached": False, "usage": {"prompt_tokens": 9, "completion_tokens": 17}})
        @_documented_errors(generate, *gen_errors)
        def post(self, body):
            """n headlines for a theme or an article

            Deterministic requests (greedy, or sampling with a `seed`) are cached in Redis;
            `X-Cache` says HIT, MISS or BYPASS, and `Cache-Control: no-cache` skips the
            cache. Concurrent requests share decoding steps (continuous batching: a request
            joins the running batch at the next step); each gets exactly the answer it would
            get alone.
            """
            field_name = "theme" if "theme" in body else "article"
            engine = _engine()
            answer = engine.headlines(**headlines_request(body), field_name=field_name, no_cache=_no_cache())
            _note(answer)
            return headlines_payload(answer.headlines, answer.usage, answer.cached, engine.host.generator.info)

    # -- models -------------------------------------------------------------------
    models = Blueprint("models", __name__, description="The model being served")

    @models.route("/v1/models")
    class Models(MethodView):
        required_scope = "generate"

        @models.response(200, ModelsResponseSchema)
        @_documented_errors(models, 401, 403, 429, 500, 503)
        def get(self):
            """What is loaded, from which run, and its eval scores"""
            return _engine().host.describe()

    # -- operations -----------------------------------------------------------------
    ops = Blueprint("ops", __name__, description="Health, readiness and metrics")

    @ops.route("/healthz")
    class Health(MethodView):
        required_scope = None

        @ops.response(200, HealthSchema)
        def get(self):
            """The process is alive (says nothing about the model)"""
            return {"status": "ok"}

    @ops.route("/readyz")
    class Ready(MethodView):
        required_scope = None

        @ops.response(200, ReadySchema, example={"status": "ready", "redis": "ok", "model": {
            "name": "smollm2-135m-instruct", "run": None, "version": "3f2a9c0d81be"},
            "batching": {"enabled": True, "window_ms": 0.0, "refill_ms": 10.0, "max_batch_size": 8,
                         "queue": 0}})
        @_documented_errors(ops, 503)
        def get(self):
            """Model loaded and warmed (200); Redis reachable, or status degraded

            503 while the model loads or when it failed to load. A Redis outage does not
            make the worker unready: it serves uncached and says `degraded`.
            """
            from flask_smorest import abort

            engine = _engine()
            host = engine.host
            metrics.MODEL_READY.set(1 if host.ready else 0)
            if not host.ready:
                abort(503, message=host.error or "the model is still loading",
                      errors={"model": [host.state]}, headers={"Retry-After": "5"})
            redis_state = engine.cache.status() if engine.cache is not None else "disabled"
            b = engine.cfg.service.batching
            return {"status": "degraded" if redis_state == "unavailable" else "ready",
                    "model": host.generator.info, "redis": redis_state,
                    "batching": {"enabled": b.enabled, "window_ms": b.window_ms, "refill_ms": b.refill_ms,
                                 "max_batch_size": b.max_batch_size,
                                 "queue": engine.batcher.queue_depth() if engine.batcher else 0}}

    @ops.route("/metrics")
    class Metrics(MethodView):
        required_scope = "admin"

        @ops.response(200, content_type="text/plain", description="Prometheus text exposition format")
        @_documented_errors(ops, 401, 403)
        def get(self):
            """Prometheus metrics of every worker of this Gunicorn instance"""
            body, content_type = metrics.render()
            response = make_response(body)
            response.headers["Content-Type"] = content_type
            return response

    for blp in (generate, models, ops):
        api.register_blueprint(blp)

    # The lane's answers: the bodies of the views above. /prompt's is written directly, as the view
    # does; /v1/headlines' is what the response schema dumps, as flask-smorest does for the view.
    headlines_schema = HeadlinesResponseSchema()

    def prompt_hit(value: dict) -> bytes:
        return json_body(prompt_payload(value["headlines"]))

    def headlines_hit(value: dict) -> bytes:
        payload = headlines_payload(value["headlines"], value["usage"], True, engine.host.generator.info)
        # The dump costs a hit a quarter of its instructions, and changes nothing in what this
        # service caches (headline strings, the usage's two ints): it is skipped for that.
        return json_body(payload if _dumped(payload) else headlines_schema.dump(payload))

    return {"/prompt": LaneRoute(schemas.PromptRequest.fast_load, prompt_request, prompt_hit,
                                 Prompt.required_scope),
            "/v1/headlines": LaneRoute(schemas.HeadlinesRequest.fast_load, headlines_request, headlines_hit,
                                       Headlines.required_scope)}
