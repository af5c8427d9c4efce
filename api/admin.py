"""``etm-admin`` (or ``python -m api.admin``): manage API keys, on the server.

    etm-admin keys create --tenant acme [--name ci]   # prints the key ONCE (stdout), its id on stderr
    etm-admin keys list [--tenant acme] [--json]      # ids, tenants, names, dates; never secrets or hashes
    etm-admin keys revoke <key id>                    # refused within ETM_AUTH_CACHE_SECONDS everywhere

Works on the store named by ``ETM_STORE_URL`` (the API's); needs neither Redis nor the API running.
Exit codes: 0 ok, 2 bad usage (unknown key id, bad tenant name).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from api.security.keys import KeyStore
from etm.settings import Settings
from jobs.storage import ArtifactStore


def _keys(settings: Settings) -> KeyStore:
    return KeyStore(ArtifactStore(settings.store_url))


def _create(args: argparse.Namespace, keys: KeyStore) -> int:
    key, rec = keys.create(args.tenant, args.name)
    print(key)
    print(
        f"created key {rec['key_id']} for tenant {rec['tenant']!r}. This is the only time the key is shown: "
        "give it to its user (ETM_API_KEY, or the header `Authorization: Bearer <key>`).",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace, keys: KeyStore) -> int:
    records = keys.list(args.tenant)
    if args.json:
        print(json.dumps(records, indent=1))
        return 0
    print(f"{'KEY ID':<14}{'TENANT':<20}{'NAME':<20}{'CREATED':<26}REVOKED")
    for r in records:
        print(f"{r['key_id']:<14}{r['tenant']:<20}{r['name'] or '-':<20}{r['created_at']:<26}{r['revoked_at'] or '-'}")
    return 0


def _revoke(args: argparse.Namespace, keys: KeyStore) -> int:
    try:
        rec = keys.revoke(args.key_id)
    except KeyError:
        print(f"error: no key {args.key_id!r}; see `etm-admin keys list`", file=sys.stderr)
        return 2
    print(
        f"revoked key {rec['key_id']} (tenant {rec['tenant']!r}) at {rec['revoked_at']}; API processes refuse it "
        f"within ETM_AUTH_CACHE_SECONDS",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etm-admin", description="Manage Explain-to-Me API keys in the store named by ETM_STORE_URL."
    )
    groups = parser.add_subparsers(dest="group", required=True)
    keys = groups.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    p = keys.add_parser("create", help="make a key for a tenant and print it (once)")
    p.add_argument("--tenant", required=True, help="tenant the key acts for (a-z, 0-9, '.', '_', '-')")
    p.add_argument("--name", default=None, help="a note saying what the key is for")
    p.set_defaults(func=_create)
    p = keys.add_parser("list", help="list keys (never their secrets)")
    p.add_argument("--tenant", default=None, help="only this tenant's keys")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_list)
    p = keys.add_parser("revoke", help="revoke a key by its id")
    p.add_argument("key_id", help="the key id (the part after etm_, as `keys list` shows it)")
    p.set_defaults(func=_revoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, _keys(Settings())))
    except ValueError as exc:  # a bad tenant name; settings that do not validate
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
