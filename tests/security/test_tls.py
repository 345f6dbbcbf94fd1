"""HTTPS at Nginx: `make certs` (deploy/certs.sh) and deploy/nginx/tls.conf, with real nginx + Gunicorn.

Nginx runs from the repo's nginx.conf (rendered by render.py) with tls.conf included, on free
loopback ports, in front of a tiny WSGI app under Gunicorn with deploy/gunicorn.conf.py.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from stack import Gunicorn, Nginx, clean_env, nginx_binary  # noqa: E402

pytestmark = pytest.mark.skipif(nginx_binary() is None or shutil.which("openssl") is None,
                                reason="nginx and openssl are needed")

TINY_APP = '''
import json
def app(environ, start_response):
    body = json.dumps({"path": environ["PATH_INFO"], "proto": environ.get("HTTP_X_FORWARDED_PROTO"),
                       "method": environ["REQUEST_METHOD"]}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''


def make_certs(target: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "deploy" / "certs.sh"), str(target)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("tls") / "certs"
    result = make_certs(target)
    assert result.returncode == 0, result.stderr
    return target


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory, certs):
    work = tmp_path_factory.mktemp("tls-stack")
    (work / "tinyapp.py").write_text(TINY_APP)
    api = Gunicorn(work, {"HEADLINE_THREADS": "4"}, app="tinyapp:app", chdir=work).start()
    api.wait_ready(path="/healthz", timeout=30)
    nginx = Nginx(work / "nginx", [f"127.0.0.1:{api.port}"], tls_certs=certs).start()
    yield nginx
    nginx.stop()
    api.stop()


def test_certs_are_idempotent_and_private(certs):
    before = {p.name: p.read_bytes() for p in certs.iterdir()}
    result = make_certs(certs)
    assert result.returncode == 0 and "kept" in result.stdout
    assert {p.name: p.read_bytes() for p in certs.iterdir()} == before
    for key in ("ca.key", "server.key"):
        assert (certs / key).stat().st_mode & 0o077 == 0
    san = subprocess.run(["openssl", "x509", "-in", str(certs / "server.crt"), "-noout", "-ext", "subjectAltName"],
                         capture_output=True, text=True).stdout
    assert "DNS:localhost" in san and "127.0.0.1" in san


def test_server_cert_remade_when_names_change(tmp_path):
    target = tmp_path / "c"
    assert make_certs(target).returncode == 0
    ca = (target / "ca.crt").read_bytes()
    crt = (target / "server.crt").read_bytes()
    env = clean_env(HEADLINE_TLS_SAN="DNS:headline.internal")
    result = subprocess.run(["bash", str(ROOT / "deploy" / "certs.sh"), str(target)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert (target / "ca.crt").read_bytes() == ca          # the CA clients trust is kept
    assert (target / "server.crt").read_bytes() != crt     # a new certificate with the new name


def test_https_with_the_generated_ca(tls_stack, certs):
    url = f"https://localhost:{tls_stack.tls_port}/v1/headlines"
    with requests.Session() as s:
        s.trust_env = False
        resp = s.get(url, verify=str(certs / "ca.crt"), timeout=10)
        assert resp.status_code == 200
        assert resp.json() == {"path": "/v1/headlines", "proto": "https", "method": "GET"}
        h = resp.headers
        assert h["Strict-Transport-Security"].startswith("max-age=") and int(h["Strict-Transport-Security"][8:]) >= 31536000
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in h["Content-Security-Policy"]
        assert h["Referrer-Policy"] == "no-referrer"
        assert h.get("X-Request-ID")
        # By IP too (SAN IP:127.0.0.1).
        assert s.get(f"https://127.0.0.1:{tls_stack.tls_port}/healthz", verify=str(certs / "ca.crt"),
                     timeout=10).status_code == 200
        # Without the CA, verification fails: the certificate is not from a public CA.
        with pytest.raises(requests.exceptions.SSLError):
            s.get(url, timeout=10)


def test_http_redirects_to_https(tls_stack, certs):
    with requests.Session() as s:
        s.trust_env = False
        resp = s.post(f"http://localhost:{tls_stack.redirect_port}/prompt?x=1", json={"prompt": "a"},
                      allow_redirects=False, timeout=10)
        assert resp.status_code in (301, 308)
        assert resp.headers["Location"] == f"https://localhost:{tls_stack.tls_port}/prompt?x=1"
        followed = s.get(f"http://localhost:{tls_stack.redirect_port}/healthz", verify=str(certs / "ca.crt"),
                         timeout=10)
        assert followed.status_code == 200 and followed.url.startswith("https://")


def _handshake(port: int, ctx: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            return tls.version()


def test_only_tls12_and_tls13(tls_stack, certs):
    def ctx(minimum, maximum):
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.load_verify_locations(certs / "ca.crt")
        # Let the client offer old versions (OpenSSL 3 refuses them at the default level), so
        # that a failure below is the server's refusal.
        c.set_ciphers("ALL:@SECLEVEL=0")
        c.minimum_version, c.maximum_version = minimum, maximum
        return c

    v = ssl.TLSVersion
    assert _handshake(tls_stack.tls_port, ctx(v.TLSv1_3, v.TLSv1_3)) == "TLSv1.3"
    assert _handshake(tls_stack.tls_port, ctx(v.TLSv1_2, v.TLSv1_2)) == "TLSv1.2"
    for maximum in (v.TLSv1_1, v.TLSv1):
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            _handshake(tls_stack.tls_port, ctx(v.TLSv1, maximum))


def test_weak_cipher_refused(tls_stack, certs):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.load_verify_locations(certs / "ca.crt")
    c.maximum_version = ssl.TLSVersion.TLSv1_2
    c.set_ciphers("AES128-SHA:@SECLEVEL=0")   # RSA key exchange, CBC: not offered by the server
    with pytest.raises(ssl.SSLError):
        _handshake(tls_stack.tls_port, c)
