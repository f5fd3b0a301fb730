"""Rewrite the README's configuration table from shared/settings.py (a test checks it)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's settings, whatever is installed

from shared.settings import markdown_table  # noqa: E402

readme = REPO / "README.md"
text = readme.read_text()
start, end = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
head, rest = text.split(start)
_, tail = rest.split(end)
readme.write_text(f"{head}{start}\n{markdown_table()}\n{end}{tail}")
