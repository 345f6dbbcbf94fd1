#!/bin/sh
# Container entrypoint: `api` (default) runs Gunicorn on the repo's gunicorn.conf.py,
# `train ...` runs the trainer CLI, anything else is executed as given.
set -eu

# prometheus_client multiprocess mode: stale files from a previous start would be summed in.
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete 2>/dev/null || true
fi

# On AWS Fargate the served run comes from S3 (the same code as the Lambda path) and the
# Redis URL, which carries a secret, from its own variable.
if [ -n "${HEADLINE_MODEL_BUCKET:-}" ] && [ -n "${HEADLINE_MODEL_KEY:-}" ]; then
    run_dir=$(python -c 'import os, pathlib
from service.lambda_handler import fetch_run
print(fetch_run(os.environ["HEADLINE_MODEL_BUCKET"], os.environ["HEADLINE_MODEL_KEY"],
                pathlib.Path(os.environ.get("HEADLINE_MODEL_DIR", "/tmp/run"))))')
    HEADLINE_CONFIG_SET="${HEADLINE_CONFIG_SET:-} service.model=${run_dir}"
fi
if [ -n "${HEADLINE_REDIS_URL:-}" ]; then
    HEADLINE_CONFIG_SET="${HEADLINE_CONFIG_SET:-} service.cache.redis_url=${HEADLINE_REDIS_URL}"
fi

# Container-specific values (Redis host, auth on, ...) are applied on top of config.yml, so
# the file keeps being the one source for everything else. /tmp is a tmpfs in compose.
if [ -n "${HEADLINE_CONFIG_SET:-}" ]; then
    python /usr/local/lib/headline/render_config.py \
        "${HEADLINE_CONFIG:-/app/config/config.yml}" /tmp/headline-config.yml
    HEADLINE_CONFIG=/tmp/headline-config.yml
    export HEADLINE_CONFIG
fi

case "${1:-api}" in
    api)
        shift || true
        # gunicorn.conf.py binds to loopback by default; a container listens on all interfaces.
        HEADLINE_BIND="${HEADLINE_BIND:-0.0.0.0:${PORT:-8000}}"
        export HEADLINE_BIND
        exec gunicorn -c deploy/gunicorn.conf.py "$@" 'service:create_app()'
        ;;
    train)
        shift
        # The progress file is what the trainer container's healthcheck watches.
        exec headline train --config "$HEADLINE_CONFIG" \
            --progress-json "${PROGRESS_FILE:-/tmp/progress.jsonl}" "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
