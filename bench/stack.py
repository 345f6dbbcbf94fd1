"""Start the serving topology on free loopback ports for tests and bench/reliability.py.

Redis (a private redis-server), Gunicorn instances with deploy/gunicorn.conf.py, and Nginx with
deploy/nginx/nginx.conf rendered by deploy/nginx/render.py (plus, optionally, the TLS server of
deploy/nginx/tls.conf rendered by render_tls.py). Every process is ours: started with Popen,
stopped by its own pid, never by name. Stdlib only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NGINX_DIR = ROOT / "deploy" / "nginx"
sys.path.insert(0, str(NGINX_DIR))
from render import render, state_dir_values  # noqa: E402
from render_tls import render_tls  # noqa: E402

TLS_INCLUDE = "include tls.d/*.conf;"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


class Redis:
    def __init__(self, workdir: Path, port: int | None = None):
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class Gunicorn:
    """One API instance: gunicorn -c deploy/gunicorn.conf.py (or a custom app) on a free port."""

    def __init__(self, workdir: Path, env: dict[str, str], *, app: str | None = None,
                 port: int | None = None, chdir: Path = ROOT):
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.env = env
        self.app = app
        self.chdir = chdir
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / f"gunicorn-{self.port}.log"

    def start(self) -> Gunicorn:
        self.workdir.mkdir(parents=True, exist_ok=True)
        prom = self.workdir / f"prometheus-{self.port}"
        prom.mkdir(exist_ok=True)
        env = clean_env(**self.env, HEADLINE_BIND=f"127.0.0.1:{self.port}",
                        PROMETHEUS_MULTIPROC_DIR=str(prom))
        cmd = [str(Path(sys.executable).parent / "gunicorn"), "-c", str(ROOT / "deploy" / "gunicorn.conf.py"),
               "--chdir", str(self.chdir)]
        if self.app:
            cmd.append(self.app)
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def wait_ready(self, path: str = "/readyz", timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn on :{self.port} exited: {self.tail()}")
            if http_get(f"http://127.0.0.1:{self.port}{path}", timeout=2)[0] == 200:
                return
            time.sleep(0.2)
        raise TimeoutError(f"gunicorn on :{self.port} not ready in {timeout:.0f}s: {self.tail()}")

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the master and its workers (its own process group): a crash, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()


class Nginx:
    """deploy/nginx/nginx.conf rendered into a private prefix; optionally with the TLS servers."""

    def __init__(self, workdir: Path, upstreams: list[str], *, max_body_bytes: int = 65536,
                 tls_certs: Path | None = None):
        self.prefix = Path(workdir).absolute()
        self.port = free_port()
        self.upstreams = upstreams
        self.max_body_bytes = max_body_bytes
        self.tls_certs = tls_certs
        self.tls_port = free_port() if tls_certs else None
        self.redirect_port = free_port() if tls_certs else None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def render(self) -> Path:
        self.prefix.mkdir(parents=True, exist_ok=True)
        values = state_dir_values(self.prefix)
        values["listen"] = f"127.0.0.1:{self.port}"
        values["client_max_body_size"] = str(self.max_body_bytes)
        values["access_log"] = "off"  # load tests write no access log to a shared disk
        text = render((NGINX_DIR / "nginx.conf").read_text(), values, self.upstreams)
        (self.prefix / "tls.d").mkdir(exist_ok=True)
        if self.tls_certs:
            if TLS_INCLUDE not in text:
                # What the integration adds to nginx.conf: the last line of the http block.
                head, _, tail = text.rpartition("}")
                text = f"{head}    {TLS_INCLUDE}\n}}{tail}"
            (self.prefix / "tls.d" / "tls.conf").write_text(render_tls(
                f"127.0.0.1:{self.tls_port}", f"127.0.0.1:{self.redirect_port}", self.tls_certs))
        conf = self.prefix / "nginx.conf"
        conf.write_text(text)
        return conf

    def start(self) -> Nginx:
        conf = self.render()
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed: run `make system-deps` (apt-get install nginx)")
        err = str(self.prefix / "error.log")
        check = subprocess.run([binary, "-t", "-q", "-p", str(self.prefix), "-c", str(conf), "-e", err],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed: {check.stderr}")
        # -g "daemon off;" keeps nginx our child, so we stop it by its own pid.
        self.proc = subprocess.Popen([binary, "-p", str(self.prefix), "-c", str(conf), "-e", err,
                                      "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)
        if self.tls_port:
            wait_port(self.tls_port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
