"""Render deploy/nginx/nginx.conf for one environment: rewrite only the `# @name` lines.

    python deploy/nginx/render.py --listen 127.0.0.1:8080 \
        --upstream 127.0.0.1:8001 --upstream 127.0.0.1:8002 \
        --state-dir .run/nginx [--max-body-bytes 65536] [--template PATH] > nginx.conf

--state-dir puts the pid file, temp folders and both logs under one folder (so that nginx runs
without root and tests do not collide). Stdlib only; the template itself stays a working
config for docker-compose.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "nginx.conf"
_TAGGED = re.compile(r"^(?P<indent>\s*)(?P<directive>\S+)\s+(?P<value>.*?);\s*# @(?P<tag>[a-z_]+)\s*$")
_UPSTREAM_OPTIONS = "max_fails=2 fail_timeout=10s"


def render(template: str, values: dict[str, str], upstreams: list[str] | None = None) -> str:
    """Replace the value of each tagged line whose tag is in ``values``; ``upstreams`` replaces
    the tagged server lines (their options kept). Unknown tags in ``values`` are an error."""
    seen: set[str] = set()
    out: list[str] = []
    upstream_done = False
    for line in template.splitlines(keepends=True):
        m = _TAGGED.match(line)
        if not m:
            out.append(line)
            continue
        tag, indent = m["tag"], m["indent"]
        seen.add(tag)
        if tag == "upstream" and upstreams is not None:
            if not upstream_done:
                options = m["value"].split(None, 1)[1] if " " in m["value"] else _UPSTREAM_OPTIONS
                for server in upstreams:
                    out.append(f"{indent}server {server} {options};  # @upstream\n")
                upstream_done = True
            continue
        if tag in values:
            out.append(f"{indent}{m['directive']} {values[tag]};  # @{tag}\n")
        else:
            out.append(line)
    unknown = set(values) - seen
    if unknown:
        raise ValueError(f"no line tagged {sorted(unknown)} in the template")
    return "".join(out)


def state_dir_values(state_dir: Path) -> dict[str, str]:
    d = state_dir.absolute()
    return {
        "pid": f"{d}/nginx.pid",
        "error_log": f"{d}/error.log warn",
        "access_log": f"{d}/access.log headline_json",
        "client_body_temp_path": f"{d}/client_body",
        "proxy_temp_path": f"{d}/proxy",
        "fastcgi_temp_path": f"{d}/fastcgi",
        "uwsgi_temp_path": f"{d}/uwsgi",
        "scgi_temp_path": f"{d}/scgi",
    }


def write_output(text: str, output: Path | None) -> None:
    """Write the rendered config to ``output`` (creating its folder), or to stdout."""
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument("--listen", help="address:port or port Nginx listens on")
    parser.add_argument("--upstream", action="append", help="host:port of a Gunicorn instance (repeat)")
    parser.add_argument("--state-dir", type=Path, help="folder for pid, temp files and logs")
    parser.add_argument("--max-body-bytes", type=int, help="client_max_body_size (service.max_body_bytes)")
    parser.add_argument("--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)

    values: dict[str, str] = {}
    if args.state_dir:
        values.update(state_dir_values(args.state_dir))
    if args.listen:
        values["listen"] = args.listen
    if args.max_body_bytes:
        values["client_max_body_size"] = str(args.max_body_bytes)
    text = render(args.template.read_text(encoding="utf-8"), values, args.upstream)
    write_output(text, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
