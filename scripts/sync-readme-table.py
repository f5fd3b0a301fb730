"""Rewrite the README's configuration table from shared/settings.py (a test checks it)."""

from pathlib import Path

from shared.settings import markdown_table

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
start, end = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
head, rest = text.split(start)
_, tail = rest.split(end)
readme.write_text(f"{head}{start}\n{markdown_table()}\n{end}{tail}")
