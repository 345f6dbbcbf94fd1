"""Readers shared by the deploy tests: the compose file (with Compose's variable
interpolation), .env.example, the Nginx config and the Terraform module (python-hcl2)."""

from __future__ import annotations

import re
import shutil
from functools import lru_cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
NGINX_CONF = REPO / "deploy" / "nginx" / "nginx.conf"
NGINX_TLS_CONF = REPO / "deploy" / "nginx" / "tls.conf"
GUNICORN_CONF = REPO / "deploy" / "gunicorn.conf.py"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
TERRAFORM_DIR = REPO / "deploy" / "terraform" / "aws"
API_SERVICES = ("api1", "api2")
API_PORT = 8000

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR; $$ is a literal $.
_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def compose_raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


def variables_used(text: str) -> set[str]:
    """Names of the ${VARS} a compose file interpolates (escaped $$ excluded)."""
    return {m["braced"] or m["bare"] for m in _VAR.finditer(text) if not m["escaped"]}


def interpolate(node, env: dict[str, str]):
    """Compose's interpolation, applied to every string of a parsed file."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def sub(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["bare"]
        value, op, arg = env.get(name), m["op"], m["arg"]
        if op in (":-", "-"):
            return value if value not in (None, "") or (op == "-" and value is not None) else arg
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise KeyError(f"required variable {name} is unset: {arg}")
            return value
        return value or ""

    return _VAR.sub(sub, node)


@lru_cache(maxsize=1)
def compose() -> dict:
    """The compose file as `docker compose config` would see it with .env.example as .env."""
    return interpolate(compose_raw(), env_example())


def services() -> dict:
    return compose()["services"]


def healthcheck_urls(service: dict) -> list[str]:
    test = service.get("healthcheck", {}).get("test", [])
    words = test if isinstance(test, list) else [test]
    return [w for w in words if isinstance(w, str) and w.startswith("http://")]


def nginx_upstream_servers(text: str) -> list[tuple[str, int]]:
    servers = []
    for block in re.finditer(r"upstream\s+\S+\s*\{(.*?)\}", text, re.S):
        for host, port in re.findall(r"^\s*server\s+([^\s:;]+):(\d+)", block.group(1), re.M):
            servers.append((host, int(port)))
    return servers


def nginx_listen_ports(text: str) -> set[int]:
    ports = set()
    for value in re.findall(r"^\s*listen\s+([^;]+);", text, re.M):
        addr = value.split()[0]
        ports.add(int(addr.rsplit(":", 1)[-1]))
    return ports


def which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/local/bin") / name) if p.exists()), None
    )
