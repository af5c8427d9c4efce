"""``python -m api.export_openapi``: write the app's OpenAPI document to ``openapi/openapi.json``
(sorted keys, two-space indent, trailing newline: stable, diffable). ``--check`` exits 1 when the
file differs from the app instead of writing it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OPENAPI_FILE = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"
# The built-in names the `etm` help lists (the client imports neither the registries nor torch): written from
# the same document, checked by the same --check.
NAMES_FILE = Path(__file__).resolve().parent.parent / "client" / "builtin_names.py"


def names_text(doc: dict) -> str:
    props = doc["components"]["schemas"]["JobRequest"]["properties"]
    methods = tuple(props["method"]["enum"])
    measures = tuple(m for m in props["measures"]["items"]["enum"] if m != "all")
    opt_in = tuple(props["measures"].get("x-opt-in", ()))

    def listing(name: str, values: tuple[str, ...]) -> str:
        return f"{name} = (\n" + "".join(f"    {v!r},\n" for v in values) + ")\n"

    return (
        '"""The built-in salience methods and measure families, for the `etm` help (written by `make openapi` from\n'
        'openapi/openapi.json; a service with plugins may offer more, and the service is the judge)."""\n\n'
        + listing("METHODS", methods) + listing("MEASURES", measures)
        + "# Run only when named: not in the default list, nor in 'all'.\n" + listing("OPT_IN", opt_in)
    )


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
    names = names_text(json.loads(text))
    if args.check:
        for path, want in ((args.out, text), (NAMES_FILE, names)):
            if (path.read_text() if path.is_file() else "") != want:
                print(f"{path} is out of date; run `make openapi`", file=sys.stderr)
                return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    NAMES_FILE.write_text(names)
    print(f"wrote {args.out} and {NAMES_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
