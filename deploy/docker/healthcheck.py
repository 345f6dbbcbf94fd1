"""Container health probe: exit 0 when the URL answers 2xx within the timeout, else 1.

Python instead of curl so the runtime image needs no extra package.
"""

import sys
import urllib.request

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/readyz"
try:
    with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 (fixed local URL)
        sys.exit(0 if 200 <= response.status < 300 else 1)
except Exception as exc:  # any failure is "unhealthy"; say why in `docker inspect`
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
