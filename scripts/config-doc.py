#!/usr/bin/env python3
"""Regenerate the settings table of docs/configuration.md from storm.config (never edit the table by hand)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from storm.config import settings_table  # noqa: E402

HEADER = "| Variable | Default | Meaning |"


def main() -> int:
    doc = ROOT / "docs" / "configuration.md"
    lines = doc.read_text().splitlines()
    start = lines.index(HEADER)
    end = start + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    rows = [f"| `{env}` | `{default}` | {text} |" for env, default, text in settings_table()]
    lines[start:end] = [HEADER, "|---|---|---|", *rows]
    doc.write_text("\n".join(lines) + "\n")
    print(f"{doc.relative_to(ROOT)}: {len(rows)} settings")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
