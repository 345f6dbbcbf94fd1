"""Render deploy/nginx/tls.conf for one environment (its `# @name` lines), like render.py.

    python deploy/nginx/render_tls.py --tls-listen 127.0.0.1:8443 --redirect-listen 127.0.0.1:8081 \
        --certs-dir certs --output .run/nginx/tls.d/tls.conf [--hsts-max-age 63072000]

The output goes in a `tls.d/` folder beside the rendered nginx.conf, which includes
`tls.d/*.conf`. The redirect target port is taken from --tls-listen. Stdlib only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from render import render, write_output  # noqa: E402  (deploy/nginx/render.py: the same tag convention)

TEMPLATE = HERE / "tls.conf"


def render_tls(tls_listen: str, redirect_listen: str, certs_dir: str | Path, *,
               hsts_max_age: int = 63072000, template: Path = TEMPLATE) -> str:
    certs = Path(certs_dir).absolute()
    port = tls_listen.rsplit(":", 1)[-1]
    values = {
        "tls_listen": f"{tls_listen} ssl",
        "redirect_listen": redirect_listen,
        "https_port": f"$headline_https_port {port}",
        "ssl_certificate": str(certs / "server.crt"),
        "ssl_certificate_key": str(certs / "server.key"),
        "hsts": f'$headline_hsts "max-age={hsts_max_age}"',
    }
    return render(template.read_text(encoding="utf-8"), values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tls-listen", default="8443", help="address:port or port of the TLS server")
    parser.add_argument("--redirect-listen", default="8081", help="address:port or port that redirects to it")
    parser.add_argument("--certs-dir", default="certs", help="folder with server.crt and server.key (make certs)")
    parser.add_argument("--hsts-max-age", type=int, default=63072000, help="seconds (0 switches HSTS off in browsers)")
    parser.add_argument("--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    text = render_tls(args.tls_listen, args.redirect_listen, args.certs_dir, hsts_max_age=args.hsts_max_age)
    write_output(text, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
