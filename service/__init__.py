"""Headline Studio API service: Flask-Smorest app, continuous batching, Redis cache, metrics.

``create_app`` is the entry point (Gunicorn: ``service:create_app()``). It is
imported on first use, so light modules such as ``service.keys_cli`` (behind
``headline keys``) load without Flask.
"""

__all__ = ["create_app"]


def __getattr__(name):
    if name == "create_app":
        from service.app import create_app

        return create_app
    raise AttributeError(f"module 'service' has no attribute {name!r}")
