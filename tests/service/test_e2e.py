"""End to end: Redis + two Gunicorn instances + Nginx from the repo's configs (deploy/serve.sh)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from config import ConfigDocument
from tests.service.conftest import env_without_proxy, free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                                reason="nginx not installed")


def _nginx() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def _post(port: int, path: str, body: dict, headers: dict | None = None) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), json.loads(r.read() or b"{}")
    finally:
        conn.close()


def test_rendered_nginx_conf_passes_nginx_t(tmp_path):
    out = tmp_path / "nginx.conf"
    subprocess.run([str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists() else "python3",
                    str(REPO / "deploy/nginx/render.py"), "--listen", "127.0.0.1:18999",
                    "--upstream", "127.0.0.1:18001", "--upstream", "127.0.0.1:18002",
                    "--state-dir", str(tmp_path), "--max-body-bytes", "65536", "--output", str(out)], check=True)
    text = out.read_text()
    assert "server 127.0.0.1:18001 max_fails=2 fail_timeout=10s;" in text and "api1:8000" not in text
    r = subprocess.run([_nginx(), "-t", "-p", str(tmp_path), "-c", str(out), "-e", str(tmp_path / "e.log")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # The template differs from the rendered file only on tagged lines.
    template = (REPO / "deploy/nginx/nginx.conf").read_text().splitlines()
    rendered = text.splitlines()
    assert len(template) == len(rendered)
    assert all(a == b or "# @" in a for a, b in zip(template, rendered))


@pytest.mark.slow
def test_stack_through_nginx_survives_losing_an_instance(tmp_path, tiny_model_dir, redis_url, redis_client):
    doc = ConfigDocument.read(REPO / "config/config.yml")
    doc.set("service.model", str(tiny_model_dir))
    doc.set("service.cache.redis_url", redis_url)
    config = tmp_path / "config.yml"
    doc.save(config)
    port, api_ports = free_port(), [free_port(), free_port()]
    tls_port, redirect_port = free_port(), free_port()
    certs = tmp_path / "certs"
    made = subprocess.run(["bash", str(REPO / "deploy/certs.sh"), str(certs)], capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    env = env_without_proxy() | {
        "HEADLINE_PORT": str(port), "HEADLINE_API_PORTS": " ".join(map(str, api_ports)),
        "HEADLINE_RUN_DIR": str(tmp_path / "run"), "HEADLINE_CONFIG": str(config),
        "HEADLINE_THREADS": "4", "HEADLINE_READY_TIMEOUT": "120",
        "HEADLINE_CERTS_DIR": str(certs), "HEADLINE_TLS_PORT": str(tls_port),
        "HEADLINE_REDIRECT_PORT": str(redirect_port),
    }
    serve = ["bash", str(REPO / "deploy/serve.sh")]
    started = subprocess.run(serve + ["start"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"http://localhost:{port}/swagger/index.html" in started.stdout
        assert f"https://localhost:{tls_port}/swagger/index.html" in started.stdout

        # HTTPS with the CA of certs.sh (render_tls.py's tls.conf in the run dir's tls.d/), and the
        # plain-HTTP port that redirects to it.
        ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        conn = http.client.HTTPSConnection("localhost", tls_port, timeout=30, context=ctx)
        conn.request("POST", "/prompt", json.dumps({"prompt": "oil price", "max_len": 5}),
                      {"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["response"]
        assert r.getheader("Strict-Transport-Security", "").startswith("max-age=")
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", redirect_port, timeout=10)
        conn.request("GET", "/healthz", headers={"Host": "localhost"})
        r = conn.getresponse()
        assert r.status == 308 and r.getheader("Location") == f"https://localhost:{tls_port}/healthz"
        conn.close()

        status, headers, body = _post(port, "/prompt", {"prompt": "oil price", "max_len": 50},
                                      {"X-Request-ID": "e2e-1"})
        assert status == 200 and body["response"] and headers["X-Request-ID"] == "e2e-1"
        # Different themes (cache misses) spread over both instances.
        for i in range(6):
            status, headers, body = _post(port, "/v1/headlines", {"theme": f"theme {i}", "max_new_tokens": 4})
            assert status == 200, body
        status, headers, _ = _post(port, "/prompt", {"prompt": "oil price", "max_len": 50})
        assert headers["X-Cache"] == "HIT"  # shared Redis: whichever instance answers
        # A /v1/headlines hit (the cache-hit lane under Gunicorn): the answer generated for theme 0.
        status, headers, hit = _post(port, "/v1/headlines", {"theme": "theme 0", "max_new_tokens": 4},
                                     {"X-Request-ID": "e2e-v1"})
        assert (status, headers["X-Cache"], headers["X-Request-ID"], hit["cached"]) == (200, "HIT", "e2e-v1", True)
        status, _, body = _post(port, "/prompt", {"prompt": "x" * 70_000, "max_len": 5})
        assert status == 413 and body["code"] == 413

        # Metrics straight from one instance (multiprocess mode).
        conn = http.client.HTTPConnection("127.0.0.1", api_ports[0], timeout=10)
        conn.request("GET", "/metrics")
        assert b"headline_requests_total" in conn.getresponse().read()
        conn.close()

        # Kill one instance outright (master and worker: its process group), keep sending.
        victim = int((tmp_path / "run" / f"api-{api_ports[0]}.pid").read_text())
        os.killpg(victim, signal.SIGKILL)
        time.sleep(0.3)
        for i in range(12):
            status, _, body = _post(port, "/v1/headlines", {"theme": f"after kill {i}", "max_new_tokens": 4})
            assert status == 200, body
    finally:
        stopped = subprocess.run(serve + ["stop"], env=env, capture_output=True, text=True, timeout=60)
        print(stopped.stdout, stopped.stderr)
        for log in sorted((tmp_path / "run").glob("api-*.log")):
            print(log.name, log.read_text()[-2000:])
    assert not list((tmp_path / "run").glob("api-*.pid"))
    assert not (tmp_path / "run" / "nginx" / "nginx.pid").exists()
    for closed in (port, tls_port, redirect_port):
        with pytest.raises(OSError):
            http.client.HTTPConnection("127.0.0.1", closed, timeout=2).request("GET", "/healthz")
