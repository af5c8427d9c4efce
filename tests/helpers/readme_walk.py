"""Run the README's "The service in five minutes" walk as a new user would: its shell blocks, in order.

Nothing in the README is rewritten but the base URL. A block preceded by
``<!-- readme-walk: skip (why) -->`` is not run (it needs the user's own files). The blocks run in one
bash process (they share ``API`` and ``JOB``) with ``set -e`` and a ``curl`` that fails on HTTP errors
(``--fail-with-body``), so a command that stops working stops the walk with its exit status.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## The service in five minutes"
README_BASE = "http://127.0.0.1:8000"
SKIP = re.compile(r"<!--\s*readme-walk:\s*skip\b")


# HTTP errors fail curl (exit 22), unless the README's command chose -f itself (curl refuses both flags).
PRELUDE = """set -e
curl() {
  for a in "$@"; do case "$a" in --fail*|-f|-[a-zA-Z]*f*) command curl "$@"; return;; esac; done
  command curl --fail-with-body "$@"
}
"""


@dataclass
class Block:
    code: str
    line: int  # 1-based line of the opening fence
    skipped: bool


def walk_blocks(text: str | None = None) -> list[Block]:
    """The ```bash blocks of the section, up to its first sub-section or the next section."""
    lines = (README.read_text() if text is None else text).splitlines()
    start = lines.index(SECTION)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("## ", "### "))), len(lines))
    blocks, i = [], start + 1
    while i < end:
        if lines[i].strip() == "```bash":
            j = next(k for k in range(i + 1, end) if lines[k].strip() == "```")
            before = next((lines[k] for k in range(i - 1, start, -1) if lines[k].strip()), "")
            blocks.append(Block("\n".join(lines[i + 1 : j]), i + 1, bool(SKIP.search(before))))
            i = j
        i += 1
    return blocks


def script(blocks: list[Block], base_url: str) -> str:
    """One bash script of the blocks that run, with the README's base URL replaced by ``base_url``."""
    run = [b for b in blocks if not b.skipped]
    body = "\n".join(f"# README line {b.line}\n{b.code.replace(README_BASE, base_url)}" for b in run)
    return PRELUDE + body + "\n"


def run(blocks: list[Block], base_url: str, cwd: Path, timeout: float = 360) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script(blocks, base_url)], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
