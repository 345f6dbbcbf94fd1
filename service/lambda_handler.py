"""AWS Lambda entry point: the same Flask app as under Gunicorn, driven by API Gateway events.

API Gateway (HTTP API, payload format 2.0) invokes ``handler(event, context)``; apig-wsgi turns
the event into a WSGI request for ``service.create_app()`` and the response back into the
event shape API Gateway expects. The app is built on the first invocation and then reused for
the life of the container: building it loads and warms the model, which belongs in the first
request's (long) timeout rather than Lambda's 10-second init phase.

Configuration, all optional, from the function's environment (set by deploy/terraform/aws):

- ``HEADLINE_CONFIG``: the config file (default: the packaged config.yml).
- ``HEADLINE_CONFIG_SET``: ``section.key=value`` overrides separated by whitespace, the CLI's
  ``--set`` syntax (the same variable the container entrypoint applies).
- ``HEADLINE_REDIS_URL``: sets ``service.cache.redis_url`` (kept apart: it carries a secret).
- ``HEADLINE_MODEL_BUCKET`` + ``HEADLINE_MODEL_KEY``: an S3 object holding a run folder as
  ``.tar.gz``; it is fetched once into ``HEADLINE_MODEL_DIR`` (default ``/tmp/run``, Lambda's
  only writable place) and served as ``service.model``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_handler: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None


def fetch_run(bucket: str, key: str, dest: Path) -> Path:
    """Download and unpack s3://bucket/key (a run folder as .tar.gz) into dest, once."""
    marker = dest / ".complete"
    if marker.exists() and marker.read_text() == f"s3://{bucket}/{key}":
        return dest
    import boto3  # only on Lambda; not a dependency of the service itself

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".run.", dir=dest.parent))
    try:
        archive = tmp / "run.tar.gz"
        log.info("fetching model run s3://%s/%s", bucket, key)
        boto3.client("s3").download_file(bucket, key, str(archive))
        with tarfile.open(archive, "r:gz") as tar:
            # The "data" filter refuses absolute paths, links out of the folder and devices.
            tar.extractall(tmp / "run", filter="data")
        archive.unlink()
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp / "run", dest)
        marker.write_text(f"s3://{bucket}/{key}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def overrides_from_env(environ: os._Environ | dict[str, str] = os.environ) -> list[str]:
    """The ``a.b=c`` overrides this environment asks for, in the order they apply."""
    overrides = environ.get("HEADLINE_CONFIG_SET", "").split()
    if environ.get("HEADLINE_REDIS_URL"):
        overrides.append(f"service.cache.redis_url={environ['HEADLINE_REDIS_URL']}")
    bucket, key = environ.get("HEADLINE_MODEL_BUCKET"), environ.get("HEADLINE_MODEL_KEY")
    if bucket and key:
        run_dir = fetch_run(bucket, key, Path(environ.get("HEADLINE_MODEL_DIR", "/tmp/run")))
        overrides.append(f"service.model={run_dir}")
    return overrides


def build_app():
    """The Flask app for this container: config file + environment overrides."""
    from config import load_config
    from service import create_app, startup

    multiproc = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if multiproc:  # Lambda's /tmp starts empty; prometheus_client needs the folder to exist
        os.makedirs(multiproc, exist_ok=True)
    config = load_config(os.environ.get("HEADLINE_CONFIG") or None, overrides_from_env())
    with startup.quiet_start():  # a cold start without the collector's full passes
        return create_app(config)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry point (image CMD ``service.lambda_handler.handler``)."""
    global _handler
    if _handler is None:
        with _lock:
            if _handler is None:
                from apig_wsgi import make_lambda_handler

                # binary_support: non-text responses (Swagger UI's fonts, images) go base64.
                _handler = make_lambda_handler(build_app(), binary_support=True)
    return _handler(event, context)
