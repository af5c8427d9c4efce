"""``python -m api.export_openapi``: write the app's OpenAPI document to ``openapi/openapi.json``
(sorted keys, two-space indent, trailing newline: stable, diffable). ``--check`` exits 1 when the
file differs from the app instead of writing it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OPENAPI_FILE = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def openapi_text() -> str:
    from api.app import create_app
    from etm.settings import Settings

    app = create_app(Settings(redis_url=None))
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m api.export_openapi", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OPENAPI_FILE)
    ap.add_argument("--check", action="store_true", help="fail when the file is out of date, write nothing")
    args = ap.parse_args(argv)
    text = openapi_text()
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date; run `make openapi`", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
