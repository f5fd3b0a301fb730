"""The dashboard's gallery, review queue, throughput chart and model page in headless
Chromium, against a real API, worker and Redis (the ``api_stack`` fixture), checked against
the result lines and the run record; and the thumbnail route's rules over HTTP."""

from __future__ import annotations

import dataclasses
import html
import io
import json
import os
import re
import shutil
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rstream.shared.models.registry import Registry
from rstream.shared.storage import Storage, join
from rstream.shared.training.config import TrainConfig
from rstream.worker.finetune.run import run_finetune
from tests.api import READ, SUBMIT_ONLY, cells, poll_done, render_page
from tests.browser import Browser
from tests.images import photo
from tests.pipeline import write_dataset
from tests.services import REPO, service_unavailable

HOSTILE_NAME = "<img src=x onerror=alert(1)>.png"
HOSTILE_LABEL = "<i>red"  # a class folder whose name is markup
HOSTILE_NOTE = "<b>bold</b>"  # a kept manifest column whose value is markup
TINTS = {"blue": (0.25, 0.25, 1.0), HOSTILE_LABEL: (1.0, 0.25, 0.25)}


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        service_unavailable("chromium is not installed (apt-get install chromium)")
    return str(found)


def _png(rgb: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (50, 40), rgb).save(out, "PNG")
    return out.getvalue()


def _scored_job(api_stack: dict[str, Any], *, table: bool = False
                ) -> tuple[str, list[dict[str, Any]]]:
    """A job of 13 photos and 10 bad files; with ``table``, submitted as a JSON lines manifest that
    keeps a product id and a note (markup, in one row) for every image."""
    settings = api_stack["settings"]
    storage = Storage(settings)
    prefix = f"gallery-{uuid.uuid4().hex[:6]}"
    uris = [*write_dataset(storage, prefix, good=12), join(prefix, HOSTILE_NAME)]
    storage.write(uris[-1], _png((10, 200, 10)))
    body: dict[str, Any] = {"source": prefix, "model": api_stack["model"]}
    if table:
        rows = "".join(json.dumps({"uri": uri, "sku": 1000 + i,
                                   "note": HOSTILE_NOTE if i == 0 else f"row {i}"}) + "\n"
                       for i, uri in enumerate(uris))
        storage.write(f"{prefix}-manifest.jsonl", rows.encode())
        body.update(source=f"{prefix}-manifest.jsonl", keep=["sku", "note"])
    with api_stack["open"].client() as http:
        job = http.post("/v1/jobs", json=body).json()["job"]
        final = poll_done(http, job)
        assert (final["ok"], final["failed"]) == (13, 10), final
        lines = [json.loads(x) for x in
                 http.get(f"/v1/jobs/{job}/results").text.splitlines()]
    return job, lines


def _tile_texts(dom: str) -> list[tuple[str, str, str]]:
    """(name, label, prob) of each good tile, in page order, as the browser shows them."""
    tiles = re.findall(r'<figure class="tile" data-image="[^"]+">(.*?)</figure>', dom, re.S)
    shown = []
    for tile in tiles:
        name = tile.split('<div class="name">', 1)[1].split("</div>", 1)[0]
        label = cells(tile, "label", tag="span")[0]
        prob = cells(tile, "prob", tag="span")[0]
        shown.append((html.unescape(name), html.unescape(label), prob))
    return shown


TILES = "document.querySelectorAll('figure.tile').length"


def _probs(dom: str) -> list[str]:
    return [p for _, _, p in _tile_texts(dom)]


def test_the_gallery_its_controls_and_the_throughput_show_the_result_lines(
        api_stack: dict[str, Any], tmp_path: Path) -> None:
    chromium = _chromium()
    job, lines = _scored_job(api_stack, table=True)
    url = api_stack["open"].url
    good = [line for line in lines if line["ok"]]
    by_name = {line["uri"].rsplit("/", 1)[-1]: line for line in good}
    by_prob = sorted(good, key=lambda line: line["top"][0]["prob"])

    with Browser(chromium, tmp_path / "profile", height=2600) as page:
        page.open(f"{url}/#job={job}")
        page.wait_for(f"{TILES} === 23")
        dom = page.dom()
        shown = _tile_texts(dom)
        assert len(shown) == 13 and dom.count('class="tile bad"') == 10
        for name, label, prob in shown:
            top = by_name[name]["top"][0]
            assert (label, prob) == (str(top["label"]), f"{top['prob']:.4f}")
        # the markup in the file name is text: escaped in the DOM, no element made of it
        assert html.escape(HOSTILE_NAME, quote=False) in dom and "<img src=\"x\"" not in dom
        assert 'onerror="alert' not in dom
        reasons = cells(dom, "reason", tag="div")
        assert {html.unescape(r) for r in reasons} == {
            f"{line['error']['type']}: {line['error']['message']}" for line in lines
            if not line["ok"]} and len(reasons) == 10
        # each tile shows its image's kept columns, as the line carries them, as text
        tiles = re.findall(r'<figure class="tile[^"]*" data-image="[^"]+">(.*?)</figure>',
                           dom, re.S)
        assert len(tiles) == 23
        for tile in tiles:
            name = html.unescape(tile.split('<div class="name">', 1)[1].split("</div>", 1)[0])
            line = next(x for x in lines if x["uri"].rsplit("/", 1)[-1] == name)
            assert isinstance(line["columns"]["sku"], int)
            assert [html.unescape(x) for x in re.findall(r"<dd>(.*?)</dd>", tile)] == [
                str(line["columns"]["sku"]), line["columns"]["note"]]
        assert html.escape(HOSTILE_NOTE, quote=False) in dom and "<b>bold" not in dom
        assert dom.count('data-series="images/s"') == 1
        assert dom.count('data-series="failed share"') == 1

        # one click: the ten least certain; the pager's next page continues that order
        page.click("#review")
        page.wait_for(f"{TILES} === 10")
        assert _probs(page.dom()) == [f"{line['top'][0]['prob']:.4f}" for line in by_prob[:10]]
        page.click("#next")
        page.wait_for("document.getElementById('page').textContent.trim() === '11-20'")
        after = page.dom()
        assert _probs(after) == [f"{line['top'][0]['prob']:.4f}" for line in by_prob[10:]]
        assert after.count('class="tile bad"') == 10 - len(by_prob[10:])  # failures go last

        # a tile opens larger, with its top-k
        first = re.search(r'<figure class="tile" data-image="([^"]+)">', after)
        assert first is not None
        page.click(f'figure.tile[data-image="{first[1]}"]')
        page.wait_for("document.querySelector('#zoom ol.topk') !== null")
        page.wait_for("(document.querySelector('#zoom img').src || '').startsWith('blob:')")
        zoomed = page.dom().split('<div id="zoom">', 1)[1].split('</div>', 1)[0]
        top = by_prob[10]["top"]
        assert [html.unescape(x) for x in cells(zoomed, "label", tag="span")] == [
            str(t["label"]) for t in top]
        assert cells(zoomed, "prob", tag="span") == [f"{t['prob']:.4f}" for t in top]

        # the label filter: only that label's images, counted over the whole job
        label = Counter(str(line["top"][0]["label"]) for line in good).most_common(1)[0][0]
        of_label = [line for line in by_prob if str(line["top"][0]["label"]) == label]
        page.choose("#label-filter", label)
        page.wait_for("document.getElementById('gallery-count').textContent"
                      f".startsWith('{len(of_label)} of 23 ')")
        assert _probs(page.dom()) == [f"{line['top'][0]['prob']:.4f}"
                                      for line in of_label[:10]]
        assert {lab for _, lab, _ in _tile_texts(page.dom())} == {label}
    if os.environ.get("SAVE_DASHBOARD_SCREENSHOT"):
        shot = tmp_path / "gallery.png"
        render_page(chromium, f"{url}/#job={job}", tmp_path, screenshot=shot, height=2600)
        assert shot.stat().st_size > 10_000
        shutil.copy(shot, REPO / "docs" / "gallery.png")


def test_thumbnails_serve_only_the_jobs_own_images_to_a_read_token(
        api_stack: dict[str, Any]) -> None:
    job, lines = _scored_job(api_stack)
    api = api_stack["guarded"]
    with api.client(READ) as reader, api.client(SUBMIT_ONLY) as writer, api.client() as nobody:
        page = reader.get(f"/v1/jobs/{job}/gallery", params={"limit": 200}).json()
        assert page["images"] == len(lines) == 23
        item = next(i for i in page["items"] if i["ok"])
        path = f"/v1/jobs/{job}/images/{item['image']}/thumbnail"
        shown = reader.get(path)
        assert shown.status_code == 200 and shown.headers["content-type"] == "image/jpeg"
        assert shown.headers["cache-control"] == "private, max-age=300"
        with Image.open(io.BytesIO(shown.content)) as img:
            assert img.format == "JPEG" and max(img.size) <= 160
        assert "x-rstream-placeholder" not in shown.headers
        assert nobody.get(path).status_code == 401
        assert writer.get(path).status_code == 403
        # an empty file and a decompression bomb (100,000 x 100,000 declared) get the
        # placeholder, within the worker's own pixel limit, not a 500 or a huge decode
        for kind in ("empty", "bomb"):
            bad = next(i for i in page["items"] if not i["ok"] and kind in i["name"])
            placeholder = reader.get(f"/v1/jobs/{job}/images/{bad['image']}/thumbnail")
            assert placeholder.status_code == 200, kind
            assert placeholder.headers["x-rstream-placeholder"], kind
        for image in ("99-0", "0-999", "..%2F..%2Fetc%2Fpasswd", "0-0-0"):
            assert reader.get(f"/v1/jobs/{job}/images/{image}/thumbnail").status_code == 404
        assert reader.get(path, params={"size": 4000}).status_code == 422


def _tinted(root: Path) -> None:
    for label, tint in TINTS.items():
        folder = root / "train" / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(12):
            rgb = photo(("astronaut", "coffee", "chelsea")[i % 3], (40, 40)).convert("RGB")
            pixels = np.asarray(rgb, dtype=np.float32) * np.array(tint, dtype=np.float32)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")


def test_the_model_page_draws_the_run_and_its_confusion_matrix(
        api_stack: dict[str, Any], tmp_path: Path) -> None:
    chromium = _chromium()
    settings = api_stack["settings"]
    storage = Storage(settings)
    registry = Registry(storage, settings.models)
    name = f"tint{uuid.uuid4().hex[:4]}"
    # a fixed folder: the splits are drawn from the URIs, so they are the same on every run
    _tinted(Path(settings.storage_root) / "tinted")
    here = dataclasses.replace(settings, train_data="tinted/train")
    trained = run_finetune(here, storage, registry, name, TrainConfig(
        mode="finetune", epochs=3, batch_size=8, resize=36, crop=32, val_percent=25,
        patience=0, device="cpu"), start_ref="random:resnet18:classes=2:seed=0")
    assert trained["status"] == "promoted" and len(trained["history"]) == 3
    classes, confusion = trained["classes"], trained["confusion"]
    # a second run, gated against the first on the same split: the page compares each class
    again = run_finetune(here, storage, registry, name, TrainConfig(
        mode="finetune", epochs=1, batch_size=8, resize=36, crop=32, val_percent=25,
        patience=0, device="cpu"), force=True)
    before = registry.read_meta(name, again["version"])["gate"]["production_eval"]["per_class"]

    dom = render_page(chromium, f"{api_stack['open'].url}/#model={name}", tmp_path, height=2600)
    newest, run = dom.split('class="run"')[1:3]  # newest first
    assert again["version"] in newest and '<td class="production-accuracy">' not in run
    was = [before[c]["correct"] / before[c]["count"] for c in again["classes"]]
    now = [row[i] / sum(row) for i, row in enumerate(again["confusion"])]
    assert cells(newest, "production-accuracy") == [f"{100 * w:.1f}%" for w in was]
    changes = [html.unescape(c) for c in re.findall(
        r'<td class="class-change(?: better| worse)?">([^<]*)</td>', newest)]
    assert changes == [f"{'+' if n > w else ''}{100 * (n - w):.1f} pt"
                       for n, w in zip(now, was, strict=True)]
    assert f"Epoch chosen: {trained['best_epoch']} of 3" in run
    assert run.count('data-series="train loss"') == 1
    assert run.count('data-series="selection accuracy"') == 1
    assert [int(c) for c in re.findall(r'<td class="cm(?: diag)?">(\d+)</td>', run)] == [
        n for row in confusion for n in row]
    shown = cells(run, "class-accuracy")
    assert shown == [f"{100 * row[i] / sum(row):.1f}%" for i, row in enumerate(confusion)]
    assert html.escape(HOSTILE_LABEL, quote=False) in run and "<i>red" not in run
    assert f"validation accuracy {trained['val_accuracy']:.4f}" in run
    assert 'class="promote"' in dom and trained["version"] in dom
    assert set(classes) == set(TINTS)
    if os.environ.get("SAVE_DASHBOARD_SCREENSHOT"):
        shot = tmp_path / "model.png"
        render_page(chromium, f"{api_stack['open'].url}/#model={name}", tmp_path,
                    screenshot=shot, height=2600)
        shutil.copy(shot, REPO / "docs" / "model.png")
