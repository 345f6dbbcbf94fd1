#!/usr/bin/env bash
# Run the production topology natively: Redis (if not running), two Gunicorn instances of the
# API and Nginx in front. `make serve` = `deploy/serve.sh start`, `make stop` = `... stop`.
#
#   deploy/serve.sh start|stop|status
#
# Environment (all optional):
#   HEADLINE_PORT=8080            Nginx port (http://localhost:8080/swagger/index.html)
#   HEADLINE_LISTEN_HOST=127.0.0.1  Nginx address (0.0.0.0 to serve other machines)
#   HEADLINE_TLS_PORT=8443        HTTPS port, served when $HEADLINE_CERTS_DIR/server.crt exists
#   HEADLINE_REDIRECT_PORT=8081   plain-HTTP port that redirects to HTTPS (with TLS only)
#   HEADLINE_CERTS_DIR=certs      certificates from `make certs` (deploy/certs.sh reads it too)
#   HEADLINE_API_PORTS="8001 8002"  one Gunicorn instance per port (loopback only)
#   HEADLINE_RUN_DIR=.run         pid files, rendered nginx.conf, logs, metrics files
#   HEADLINE_CONFIG=config/config.yml   the config the API reads
#   HEADLINE_MODEL                what to serve (default service.model; when that is the
#                                 missing runs/latest, the base model.name, with a warning)
#   HEADLINE_WORKERS / HEADLINE_THREADS  per instance (deploy/gunicorn.conf.py)
#   HEADLINE_READY_TIMEOUT=300    seconds to wait for /readyz through Nginx
#
# `stop` stops exactly what `start` started (pid files in the run dir): a Redis that was
# already running is left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PORT="${HEADLINE_PORT:-8080}"
TLS_PORT="${HEADLINE_TLS_PORT:-8443}"
REDIRECT_PORT="${HEADLINE_REDIRECT_PORT:-8081}"
CERTS_DIR="${HEADLINE_CERTS_DIR:-$ROOT/certs}"
LISTEN_HOST="${HEADLINE_LISTEN_HOST:-127.0.0.1}"
API_PORTS="${HEADLINE_API_PORTS:-8001 8002}"
RUN_DIR="$(mkdir -p "${HEADLINE_RUN_DIR:-.run}" && cd "${HEADLINE_RUN_DIR:-.run}" && pwd)"
CONFIG="${HEADLINE_CONFIG:-$ROOT/config/config.yml}"
READY_TIMEOUT="${HEADLINE_READY_TIMEOUT:-300}"
if [ -x "$ROOT/.venv/bin/python" ]; then BIN="$ROOT/.venv/bin"; else BIN="$(dirname "$(command -v python3)")"; fi
PY="$BIN/python"
NGINX_DIR="$RUN_DIR/nginx"

say() { printf 'serve: %s\n' "$*"; }
die() { printf 'serve: %s\n' "$*" >&2; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

need_packages() {
    local missing=""
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx"
    command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" = 0 ]; then
        say "installing:$missing"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        die "missing Debian packages:$missing (run as root, or: sudo apt-get install$missing)"
    fi
}

nginx_bin() { command -v nginx 2>/dev/null || echo /usr/sbin/nginx; }

# Values from the config: Redis host/port (when local), max body bytes, the model to serve.
config_value() {
    HEADLINE_CONFIG="$CONFIG" "$PY" - "$1" <<'EOF'
import os, sys
from urllib.parse import urlparse
from config import load_config, resolve_path
cfg = load_config(os.environ["HEADLINE_CONFIG"])
what = sys.argv[1]
if what == "redis":
    u = urlparse(os.environ.get("HEADLINE_REDIS_URL") or cfg.service.cache.redis_url)
    print(f"{u.hostname or '127.0.0.1'} {u.port or 6379} {int(cfg.service.cache.enabled)}")
elif what == "max_body":
    print(cfg.service.max_body_bytes)
elif what == "model":
    ref = os.environ.get("HEADLINE_MODEL") or cfg.service.model
    if ref.rstrip("/").endswith("latest") and not resolve_path(ref).exists():
        print(f"FALLBACK {cfg.model.name}")
    else:
        print(ref)
EOF
}

start_redis() {
    read -r host port enabled < <(config_value redis)
    [ "$enabled" = 1 ] || { say "cache disabled in config: not starting Redis"; return; }
    if redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1; then
        say "Redis already running at $host:$port (left alone by stop)"
        return
    fi
    case "$host" in 127.0.0.1|localhost|::1) ;; *) say "Redis at $host:$port unreachable; serving uncached"; return ;; esac
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --pidfile "$RUN_DIR/redis.pid" --logfile "$RUN_DIR/redis.log" --dir "$RUN_DIR"
    for _ in $(seq 50); do redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    say "started Redis on $host:$port"
}

start_api() {
    local port="$1" pidfile="$RUN_DIR/api-$1.pid" model="$2"
    if alive "$pidfile"; then say "API instance on :$port already running"; return; fi
    mkdir -p "$RUN_DIR/prometheus-$port"
    # setsid: the instance survives this shell; its pid file holds the Gunicorn master.
    HEADLINE_BIND="127.0.0.1:$port" HEADLINE_CONFIG="$CONFIG" HEADLINE_MODEL="$model" \
    PROMETHEUS_MULTIPROC_DIR="$RUN_DIR/prometheus-$port" \
        setsid "$BIN/gunicorn" -c "$ROOT/deploy/gunicorn.conf.py" --chdir "$ROOT" \
        >>"$RUN_DIR/api-$port.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    say "started API instance on 127.0.0.1:$port (pid $(cat "$pidfile"), log $RUN_DIR/api-$port.log)"
}

start_nginx() {
    local upstreams=() p
    for p in $API_PORTS; do upstreams+=(--upstream "127.0.0.1:$p"); done
    mkdir -p "$NGINX_DIR"
    "$PY" "$ROOT/deploy/nginx/render.py" --listen "$LISTEN_HOST:$PORT" "${upstreams[@]}" \
        --state-dir "$NGINX_DIR" --max-body-bytes "$(config_value max_body)" --output "$NGINX_DIR/nginx.conf"
    # HTTPS when `make certs` has made certs/: nginx.conf includes tls.d/*.conf. A stale copy
    # goes first, so removing certs/ (or the TLS ports changing) takes effect on this start.
    mkdir -p "$NGINX_DIR/tls.d"
    rm -f "$NGINX_DIR/tls.d/tls.conf"
    if [ -f "$CERTS_DIR/server.crt" ]; then
        "$PY" "$ROOT/deploy/nginx/render_tls.py" --tls-listen "$LISTEN_HOST:$TLS_PORT" \
            --redirect-listen "$LISTEN_HOST:$REDIRECT_PORT" --certs-dir "$CERTS_DIR" \
            --output "$NGINX_DIR/tls.d/tls.conf"
    fi
    if alive "$NGINX_DIR/nginx.pid"; then
        "$(nginx_bin)" -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" -s reload
        say "reloaded Nginx"
        return
    fi
    "$(nginx_bin)" -t -q -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" -e "$NGINX_DIR/error.log"
    "$(nginx_bin)" -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" -e "$NGINX_DIR/error.log"
    say "started Nginx on $LISTEN_HOST:$PORT (logs in $NGINX_DIR)"
}

wait_ready() {
    local url="http://127.0.0.1:$PORT/readyz" deadline=$((SECONDS + READY_TIMEOUT)) body=""
    say "waiting for $url (up to ${READY_TIMEOUT}s; the model loads in each worker)"
    while [ $SECONDS -lt $deadline ]; do
        body="$("$PY" - "$url" <<'EOF' || true
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
except Exception as e:
    print(0, e)
EOF
)"
        case "$body" in 200*) say "ready: ${body#200 }"; return 0 ;; esac
        case "$body" in *failed\ to\ load*) break ;; esac
        sleep 1
    done
    say "not ready: $body"
    say "see the logs in $RUN_DIR (api-*.log)"
    return 1
}

start() {
    need_packages
    local model
    model="$(config_value model)"
    if [ "${model%% *}" = FALLBACK ]; then
        model="${model#FALLBACK }"
        say "no finished run at service.model (runs/latest): serving the base model '$model'"
        say "(train one with \`headline train\`, or set HEADLINE_MODEL)"
    fi
    start_redis
    local p
    for p in $API_PORTS; do start_api "$p" "$model"; done
    start_nginx
    wait_ready || exit 1
    say "Swagger UI: http://localhost:$PORT/swagger/index.html"
    if [ -f "$NGINX_DIR/tls.d/tls.conf" ]; then
        say "HTTPS: https://localhost:$TLS_PORT/swagger/index.html (CA: $CERTS_DIR/ca.crt;" \
            "port $REDIRECT_PORT redirects to it)"
    fi
}

stop_pid() {  # pidfile name [signal]
    local pidfile="$1" name="$2" pid
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid="$(cat "$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { say "$name did not stop in 20s; killing"; kill -KILL "$pid" 2>/dev/null || true; }
    rm -f "$pidfile"
    say "stopped $name (pid $pid)"
}

stop() {
    if alive "$NGINX_DIR/nginx.pid"; then
        "$(nginx_bin)" -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" -s quit 2>/dev/null || true
        for _ in $(seq 50); do alive "$NGINX_DIR/nginx.pid" || break; sleep 0.1; done
        stop_pid "$NGINX_DIR/nginx.pid" Nginx
        say "stopped Nginx"
    fi
    local f
    for f in "$RUN_DIR"/api-*.pid; do
        [ -e "$f" ] || continue
        stop_pid "$f" "API instance $(basename "$f" .pid)"
    done
    [ -f "$RUN_DIR/redis.pid" ] && stop_pid "$RUN_DIR/redis.pid" Redis
    return 0
}

status() {
    local f rc=0
    for f in "$NGINX_DIR/nginx.pid" "$RUN_DIR"/api-*.pid "$RUN_DIR/redis.pid"; do
        [ -e "$f" ] || continue
        if alive "$f"; then say "$(basename "$f" .pid): running (pid $(cat "$f"))"; else say "$(basename "$f" .pid): dead"; rc=1; fi
    done
    return $rc
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    restart) stop; start ;;
    *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
