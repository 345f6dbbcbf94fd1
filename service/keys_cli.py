"""``headline keys create|list|revoke``: manage the API keys of the service (issue 6).

Registered in ``trainer.cli`` with ``add_parser(sub)``; the parser's ``func`` is
``run(args) -> int``. The keys file is ``service.auth.keys_file`` of the config.
``create`` prints the plain key once, on stdout (everything else goes to stderr),
so ``KEY=$(headline keys create --name ci)`` captures just the key.

Exit codes as the rest of the CLI: 0 ok, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from config import ConfigError, load_config, resolve_path
from service.auth import SCOPES, KeyStore, KeyStoreError

EXIT_OK, EXIT_USAGE = 0, 2


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("keys", help="create, list and revoke API keys of the service")
    ksub = p.add_subparsers(dest="keys_command", required=True, metavar="{create,list,revoke}")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", type=Path, default=None, metavar="PATH", help="config file")
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=c",
                       help="override one config value, e.g. --set service.auth.keys_file=/run/keys.json")
        q.add_argument("--keys-file", type=Path, default=None, metavar="FILE",
                       help="keys file (default: service.auth.keys_file)")

    c = ksub.add_parser("create", help="make a key; prints it once (only its hash is stored)")
    common(c)
    c.add_argument("--name", required=True, help="who or what uses the key, e.g. grafana or alice")
    c.add_argument("--scope", dest="scopes", action="append", choices=SCOPES, default=None,
                   help="scope to grant (repeatable; default: generate)")
    c.add_argument("--json", action="store_true", help="print the record and key as JSON")

    ls = ksub.add_parser("list", help="show keys (id, name, scopes, created, revoked; never the key)")
    common(ls)
    ls.add_argument("--json", action="store_true", help="print JSON")

    rv = ksub.add_parser("revoke", help="revoke a key by id (takes effect on the next request)")
    common(rv)
    rv.add_argument("id", help="the key id shown by `headline keys list`")
    p.set_defaults(func=run)
    return p


def _store(args) -> KeyStore:
    if args.keys_file is not None:
        return KeyStore(args.keys_file)
    cfg = load_config(args.config, args.overrides)
    return KeyStore(resolve_path(cfg.service.auth.keys_file))


def run(args) -> int:
    try:
        store = _store(args)
        if args.keys_command == "create":
            record, plain = store.create(args.name, args.scopes or ["generate"])
            if args.json:
                print(json.dumps({**record.public(), "key": plain}))
            else:
                print(plain)
                print(f"created key {record.id} ({record.name}; scopes: {', '.join(record.scopes)}) in "
                      f"{store.path}. This is the only time the key is shown: store it now.", file=sys.stderr)
            return EXIT_OK
        if args.keys_command == "list":
            records = [r.public() for r in store.records()]
            if args.json:
                print(json.dumps(records))
            elif not records:
                print(f"no keys in {store.path}", file=sys.stderr)
            else:
                print(f"{'ID':8}  {'NAME':20}  {'SCOPES':16}  {'CREATED':25}  REVOKED")
                for r in records:
                    print(f"{r['id']:8}  {r['name'][:20]:20}  {','.join(r['scopes']):16}  {r['created']:25}  "
                          f"{r['revoked'] or '-'}")
            return EXIT_OK
        if args.keys_command == "revoke":
            record = store.revoke(args.id)
            print(f"revoked key {record.id} ({record.name}) at {record.revoked}", file=sys.stderr)
            return EXIT_OK
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyStoreError as exc:
        print(f"keys error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"usage error: unknown keys command {args.keys_command!r}", file=sys.stderr)
    return EXIT_USAGE


def main(argv=None) -> int:
    """``python -m service.keys_cli create --name x`` (same as ``headline keys``)."""
    parser = argparse.ArgumentParser(prog="headline")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["keys", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
