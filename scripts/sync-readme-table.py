"""Rewrite the README's configuration table from shared/settings.py (a test checks it)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's settings, not an installed copy's

from shared.settings import markdown_table  # noqa: E402

readme = ROOT / "README.md"
text = readme.read_text()
start, end = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
head, rest = text.split(start)
_, tail = rest.split(end)
readme.write_text(f"{head}{start}\n{markdown_table()}\n{end}{tail}")
