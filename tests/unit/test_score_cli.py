"""``rstream score``: one line per file, in order, correct counts, usage errors exit non-zero."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import skimage
from PIL import Image

from rstream.producer.cli import main

PHOTOS = Path(skimage.__file__).parent / "data"
MODEL = "random:resnet18:classes=10"


def write_jpeg(path: Path, photo: str, size: tuple[int, int] = (100, 75)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(PHOTOS / photo).convert("RGB").resize(size).save(path, "JPEG")


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("RSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RSTREAM_STORAGE_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("RSTREAM_DEVICE", "cpu")
    monkeypatch.setenv("RSTREAM_CHUNK_SIZE", "2")  # several chunks in flight, order must hold
    monkeypatch.setenv("RSTREAM_MAX_BATCH", "4")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder outside the storage root: four photos (one in a subfolder) and two bad files."""
    folder = tmp_path / "photos"
    write_jpeg(folder / "astronaut.jpg", "astronaut.png")
    write_jpeg(folder / "coffee.jpg", "coffee.png")
    write_jpeg(folder / "sub" / "chelsea.jpg", "chelsea.png")
    Image.open(PHOTOS / "camera.png").resize((80, 60)).save(folder / "camera.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "readme.txt").write_text("not an image\n")
    return folder


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_folder_gives_one_line_per_file_and_the_right_counts(
        folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    code = main(["score", str(folder), "--model", MODEL, "--out", str(out), "--topk", "2"])
    assert code == 0
    lines = read_lines(out)
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    assert [line["uri"] for line in lines] == files  # every file once, in listing order
    by_name = {Path(str(line["uri"])).name: line for line in lines}
    for name in ("astronaut.jpg", "coffee.jpg", "chelsea.jpg", "camera.png"):
        assert by_name[name]["ok"] is True
        assert by_name[name]["model"] == f"{MODEL}:seed=0"
        assert len(by_name[name]["top"]) == 2  # type: ignore[arg-type]
    for name in ("empty.jpg", "readme.txt"):
        assert by_name[name]["ok"] is False
        assert by_name[name]["error"]["type"] == "ImageError"  # type: ignore[index]
    assert "6 images, 4 ok, 2 failed" in capsys.readouterr().err


def test_a_list_file_is_scored_in_its_own_order(
        folder: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    write_jpeg(root / "a" / "one.jpg", "rocket.jpg")
    write_jpeg(root / "a" / "two.jpg", "coffee.png")
    uris = ["a/two.jpg", "a/missing.jpg", str(root / "a" / "one.jpg"), "a/two.jpg"]
    listing = tmp_path / "list.jsonl"
    listing.write_text("".join(json.dumps({"uri": u}) + "\n" for u in uris))
    assert main(["score", str(listing), "--model", MODEL]) == 0  # lines go to stdout
    captured = capfd.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["uri"] for line in lines] == uris
    assert [line["ok"] for line in lines] == [True, False, True, True]
    assert lines[1]["error"]["type"] == "NotFoundError"
    assert "4 images, 3 ok, 1 failed" in captured.err


def test_a_storage_prefix_is_listed_under_the_storage_root(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    write_jpeg(root / "imgs" / "x.jpg", "rocket.jpg")
    write_jpeg(root / "imgs" / "y.jpg", "coffee.png")
    out = tmp_path / "out.jsonl"
    assert main(["score", "imgs/", "--model", MODEL, "--out", str(out)]) == 0
    assert [line["uri"] for line in read_lines(out)] == ["imgs/x.jpg", "imgs/y.jpg"]
    assert all(line["ok"] for line in read_lines(out))


@pytest.mark.parametrize(("args", "message"), [
    (["--model", MODEL, "--topk", "0"], "--topk 0 is invalid"),
    ([], "no model given"),
    (["--model", "random:vgg11"], "not one of resnet18"),
])
def test_usage_errors_exit_non_zero_with_the_fix(
        folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        args: list[str], message: str) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["score", str(folder), "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_an_empty_source_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "nothing").mkdir()
    assert main(["score", str(tmp_path / "nothing"), "--model", MODEL]) == 2
    assert "nothing to score" in capsys.readouterr().err


def test_output_file_appears_only_when_complete(tmp_path: Path) -> None:
    from rstream.worker.serving.score import _output

    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError), _output(str(target)) as out:
        out.write(b"partial\n")
        raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with _output(str(target)) as out:
        assert isinstance(out, io.BufferedWriter)
        out.write(b"done\n")
    assert target.read_bytes() == b"done\n"
