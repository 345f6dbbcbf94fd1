"""Write the effective config for a container: config.yml plus HEADLINE_CONFIG_SET overrides.

HEADLINE_CONFIG_SET holds `section.key=value` items separated by whitespace or newlines, the
same syntax as the CLI's `--set`. The result is validated and written (comments kept) to the
path given as argv[2]; the entrypoint then points HEADLINE_CONFIG at it. One file per
container, so the service needs only HEADLINE_CONFIG and config.yml stays the one source.

    python render_config.py SOURCE.yml OUT.yml
"""

from __future__ import annotations

import os
import sys

from config import ConfigDocument, ConfigError, parse_override


def render(source: str, out: str, overrides: str) -> None:
    doc = ConfigDocument.read(source)
    for item in overrides.split():
        key, value = parse_override(item)
        doc.set(key, value)
    doc.validate()
    doc.save(out)


if __name__ == "__main__":
    try:
        render(sys.argv[1], sys.argv[2], os.environ.get("HEADLINE_CONFIG_SET", ""))
    except ConfigError as exc:
        print(f"HEADLINE_CONFIG_SET: {exc}", file=sys.stderr)
        sys.exit(2)
