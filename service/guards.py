"""Hooks for request admission: API keys, rate limits, a concurrency cap (issue 6).

Nothing here refuses anything yet. ``create_app`` runs every guard in
``Engine.guards`` before a request (``before``) and after its response
(``after``). Each view class says what it needs with ``required_scope``
("generate", "admin" or None for open endpoints such as /healthz). A guard
refuses with ``flask_smorest.abort(401|403|429|503, message=..., headers=...)``
so that the answer keeps the one error shape. Views put the completion tokens
of a request in ``flask.g.generated_tokens`` for a tokens-per-minute limit.
"""

from __future__ import annotations

from typing import Protocol

from flask import Request, Response


class Guard(Protocol):
    def before(self, request: Request, scope: str | None) -> None:
        """Admit the request or abort(); ``scope`` is the view's ``required_scope``."""

    def after(self, request: Request, response: Response) -> None:
        """Account for the finished request (release a slot, count tokens)."""


def required_scope(view_func) -> str | None:
    """The scope a view needs: ``required_scope`` on its MethodView class (None = open)."""
    view_class = getattr(view_func, "view_class", None)
    return getattr(view_class or view_func, "required_scope", None)
