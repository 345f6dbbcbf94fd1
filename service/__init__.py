"""Headline Studio API service: Flask-Smorest app, micro-batching, Redis cache, metrics.

``create_app`` is the entry point (Gunicorn: ``service:create_app()``).
"""

from service.app import create_app

__all__ = ["create_app"]
