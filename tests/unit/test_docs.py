"""The documents hold together: every relative link resolves (to a file, and to a heading
when it names one), and every ``rstream`` command shown in a code block parses with today's
command line, so a move or a renamed option cannot leave a page stale."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from rstream.producer.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in page.read_text().splitlines()
            if line.startswith("#")}


def _links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    return [target for target in LINK.findall(text)
            if not target.startswith(("http://", "https://", "mailto:"))]


def test_the_pages_are_found_and_link_to_each_other() -> None:
    assert len(PAGES) >= 12
    readme_links = {target.split("#")[0] for target in _links(ROOT / "README.md")}
    missing = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")
                     if f"docs/{p.name}" not in readme_links)
    assert missing == [], "the README's documentation table links every page"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        stale_anchor = anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved)
        if not resolved.exists() or stale_anchor:
            broken.append(target)
    assert broken == []


def _commands(page: Path) -> list[str]:
    """Each ``rstream ...`` command line in the page's code blocks, its comment and what is
    piped or redirected after it left out, continuation lines joined."""
    found = []
    for block in FENCE.findall(page.read_text()):
        if "──" in block:  # a picture, not commands
            continue
        for raw in block.replace("\\\n", " ").splitlines():
            line = raw.strip().removeprefix("$ ")
            for piece in re.split(r";|&&", line):
                part = re.split(r"\s#\s|\s\||\s>", piece)[0].strip()
                if part.startswith("rstream ") and "COMMAND" not in part:
                    found.append(part)
    return found


def test_commands_are_found_in_the_pages() -> None:
    commands = [c for page in PAGES for c in _commands(page)]
    assert len(commands) > 40
    assert "rstream worker --gpus 0,1 --concurrency 4 --per-gpu 2" in commands


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_rstream_command_shown_parses(page: Path) -> None:
    parser = build_parser()
    wrong = []
    for command in _commands(page):
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit as exc:
            if exc.code:
                wrong.append(command)
    assert wrong == []


def test_a_stale_command_is_caught() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "x", "--no-such-option"])


def _module_file(module: str) -> Path:
    """Where ``python -m MODULE`` or ``celery -A MODULE`` finds its code in this checkout."""
    parts = module.split(".")
    if parts[0] == "rstream":
        parts = parts[1:]
    base = ROOT.joinpath(*parts)
    return base / "__main__.py" if base.is_dir() else base.with_suffix(".py")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_and_script_a_page_runs_exists(page: Path) -> None:
    text = "\n".join(FENCE.findall(page.read_text())) + page.read_text()
    modules = set(re.findall(r"(?:python3? -m|celery -A) ([a-z_][\w.]*)", text)) - {
        "pytest", "venv", "pip", "celery"}
    scripts = set(re.findall(r"bash ((?:scripts|bench|\.ci)/[\w./-]+)", text))
    missing = sorted([m for m in modules if not _module_file(m).exists()]
                     + [s for s in scripts if not (ROOT / s).exists()])
    assert missing == []
