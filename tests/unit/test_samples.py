"""``rstream samples``: the labelled digits the demo trains on and scores."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from rstream.producer.cli import main


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("RSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RSTREAM_STORAGE_ROOT", str(tmp_path))


def test_digits_go_to_class_folders_with_the_last_ones_held_out(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["samples", "digits", "--digits", "--heldout", "97"]) == 0

    train = sorted((tmp_path / "digits" / "train").rglob("*.png"))
    heldout = sorted((tmp_path / "digits" / "heldout").rglob("*.png"))
    assert (len(train), len(heldout)) == (1700, 97)
    assert {p.parent.name for p in train} == {str(d) for d in range(10)}
    assert max(int(p.stem) for p in train) == 1699 < min(int(p.stem) for p in heldout)
    image = Image.open(io.BytesIO(heldout[0].read_bytes()))
    assert (image.format, image.mode, image.size) == ("PNG", "L", (32, 32))
    assert capsys.readouterr().out.strip() == (
        "wrote 1700 labelled digits under digits/train/ and 97 held out under digits/heldout/")


def test_a_heldout_count_outside_the_set_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["samples", "digits", "--digits", "--heldout", "1797"]) == 2
    assert "--heldout 1797 is invalid: use 0 to 1796" in capsys.readouterr().err
