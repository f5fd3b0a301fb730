"""Engine: one line per URI, per-item failures, one model version per call, fetch retries."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import skimage
import torch
from PIL import Image
from prometheus_client import REGISTRY

from rstream.shared.errors import NotFoundError, TransientError
from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.shared.storage.local import LocalBackend
from rstream.worker.model.loader import build, save_model
from rstream.worker.model.preprocess import Preprocessing, decode_image
from rstream.worker.serving.engine import Engine
from tests.settings import make_settings

SMALL = Preprocessing(resize=72, crop=64)
PHOTOS = Path(skimage.__file__).parent / "data"
GOOD = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"]


def jpeg(name: str, size: tuple[int, int] = (120, 90)) -> bytes:
    image = Image.open(PHOTOS / name).convert("RGB").resize(size)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def publish(registry: Registry, seed: int) -> str:
    torch.manual_seed(seed)
    module = build("resnet18", 10)
    return save_model(registry, "tiny", module, arch="resnet18",
                      classes=[f"c{i}" for i in range(10)], preprocessing=SMALL)


def point_production(registry: Registry, version: str) -> None:
    registry.storage.write(registry.pointer_uri("tiny"), json.dumps({"version": version}).encode())


class FlakyBackend(LocalBackend):
    """A local backend whose reads of a key fail with TransientError the first ``failures`` times.

    A fake by necessity here: a transient S3 fault is injected for real (botocore hooks against
    the moto server) by the storage tests; this one shows that the engine adds no retry layer
    of its own (botocore retries requests, the task retries chunks).
    """

    def __init__(self, root: str, failures: int) -> None:
        super().__init__(root)
        self.failures = failures
        self.attempts: dict[str, int] = {}
        self._lock = threading.Lock()

    def read_versioned(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        with self._lock:
            self.attempts[key] = self.attempts.get(key, 0) + 1
            attempt = self.attempts[key]
        if attempt <= self.failures:
            raise TransientError(f"{self.uri(key)}: SlowDown (injected, attempt {attempt})")
        return super().read_versioned(key, max_bytes)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # eager: these tests reach into the predictor's module (tests/unit/test_export.py and
    # test_onnx.py cover the ONNX backend, the CPU default)
    return make_settings(storage_root=str(tmp_path), device="cpu", max_batch=4,
                         max_delay_ms=5.0, decode_threads=2, topk=3, task_max_retries=2,
                         backend="eager")


@pytest.fixture
def storage(settings: Settings) -> Storage:
    storage = Storage(settings)
    for name in GOOD:
        storage.write(f"img/{name}.jpg", jpeg(name))
    storage.write("img/empty.jpg", b"")
    storage.write("img/notes.jpg", b"this is not an image at all\n")
    storage.write("img/truncated.jpg", jpeg("coffee.png")[:300])
    return storage


@pytest.fixture
def registry(storage: Storage, settings: Settings) -> Registry:
    return Registry(storage, settings.models)


@pytest.mark.parametrize("decode_device", ["cpu", "batched"])
def test_good_and_bad_images_get_one_line_each_in_order(
        settings: Settings, storage: Storage, registry: Registry, decode_device: str) -> None:
    # batched: the JPEGs decode with their batch, as RSTREAM_DECODE_DEVICE=cuda does on a GPU
    settings = dataclasses.replace(settings, decode_device=decode_device)
    version = publish(registry, seed=1)
    on_device = REGISTRY.get_sample_value("rstream_decode_path_total", {"path": "device"}) or 0
    uris = ["img/astronaut.png.jpg", "img/empty.jpg", "img/coffee.png.jpg", "img/missing.jpg",
            "img/notes.jpg", "img/chelsea.png.jpg", "img/truncated.jpg", "img/rocket.jpg.jpg"]
    with Engine(settings, storage, registry) as engine:
        lines = engine.score(uris, f"tiny@{version}")
        predictor = engine.predictor_for(f"tiny@{version}")
        expected = predictor.predict(torch.stack(
            [decode_image(storage.read(u), SMALL, settings.max_image_pixels)
             for u in uris if u.removeprefix("img/").removesuffix(".jpg") in GOOD]))
    assert [line["uri"] for line in lines] == uris
    assert [line["ok"] for line in lines] == [True, False, True, False, False, True, False, True]
    good = [line for line in lines if line["ok"]]
    for line, top in zip(good, expected, strict=True):
        assert line["model"] == f"tiny@{version}"
        assert [e["index"] for e in line["top"]] == [e["index"] for e in top]
        assert [e["label"] for e in line["top"]] == [f"c{e['index']}" for e in top]
    errors = {line["uri"]: line["error"] for line in lines if not line["ok"]}
    assert errors["img/missing.jpg"]["type"] == NotFoundError.__name__
    for uri in ("img/empty.jpg", "img/notes.jpg", "img/truncated.jpg"):
        assert errors[uri]["type"] == "ImageError" and errors[uri]["message"]
    decoded_on_device = (REGISTRY.get_sample_value(
        "rstream_decode_path_total", {"path": "device"}) or 0) - on_device
    assert decoded_on_device == (4 if decode_device == "batched" else 0)


def test_a_failed_forward_gives_error_lines_naming_the_model(
        settings: Settings, storage: Storage, registry: Registry) -> None:
    version = publish(registry, seed=1)

    class Exploding(torch.nn.Module):  # a forward fault injected into a real predictor
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("device lost (injected)")

    with Engine(settings, storage, registry) as engine:
        engine.predictor_for(f"tiny@{version}").module = Exploding()
        lines = engine.score(["img/coffee.png.jpg", "img/empty.jpg"], f"tiny@{version}")
    assert lines[0]["error"] == {"type": "RuntimeError", "message": "device lost (injected)"}
    assert lines[0]["model"] == f"tiny@{version}"
    assert lines[1]["error"]["type"] == "ImageError"


def test_a_transient_fetch_error_fails_the_call_once_so_the_task_retries_the_chunk(
        settings: Settings, storage: Storage, registry: Registry) -> None:
    flaky = FlakyBackend(settings.storage_root, failures=1)
    storage.local = flaky
    with Engine(settings, storage, registry) as engine:
        with pytest.raises(TransientError, match="SlowDown"):
            engine.score(["img/coffee.png.jpg", "img/empty.jpg"], "random:resnet18:classes=10")
        assert flaky.attempts["img/coffee.png.jpg"] == 1, "no retry loop in the engine"
        lines = engine.score(["img/coffee.png.jpg"], "random:resnet18:classes=10")
    assert lines[0]["ok"], lines[0]


def test_an_object_above_the_byte_limit_is_refused_before_it_is_read(
        settings: Settings, storage: Storage, registry: Registry) -> None:
    size = len(storage.read("img/coffee.png.jpg"))
    limited = dataclasses.replace(settings, max_object_bytes=size - 1)
    with Engine(limited, storage, registry) as engine:
        lines = engine.score(["img/coffee.png.jpg"], "random:resnet18:classes=10")
    assert lines[0]["error"] == {
        "type": "ObjectTooLarge",
        "message": f"{storage.local.uri('img/coffee.png.jpg')}: {size} bytes, above "
                   f"RSTREAM_MAX_OBJECT_BYTES={size - 1}: raise it to accept the object"}


def test_a_model_name_follows_production_at_the_reload_interval(
        settings: Settings, storage: Storage, registry: Registry) -> None:
    first, second = publish(registry, seed=1), publish(registry, seed=2)
    point_production(registry, first)
    with Engine(settings, storage, registry) as engine:
        assert engine.score(["img/coffee.png.jpg"], "tiny")[0]["model"] == f"tiny@{first}"
        point_production(registry, second)
        # reload_interval (30 s) has not passed: still the version read before
        assert engine.score(["img/coffee.png.jpg"], "tiny")[0]["model"] == f"tiny@{first}"
    fast = dataclasses.replace(settings, reload_interval=0.0)
    with Engine(fast, storage, registry) as engine:
        assert engine.score(["img/coffee.png.jpg"], "tiny")[0]["model"] == f"tiny@{second}"
        assert engine.predictor_for("tiny") is engine.predictor_for(f"tiny@{second}")


def test_concurrent_calls_each_get_their_own_lines(
        settings: Settings, storage: Storage, registry: Registry) -> None:
    version = publish(registry, seed=1)
    ref = f"tiny@{version}"
    calls = [[f"img/{GOOD[(i + j) % 4]}.jpg" for j in range(3)] + ["img/empty.jpg"]
             for i in range(6)]
    with Engine(settings, storage, registry) as engine:
        alone = [engine.score(uris, ref) for uris in calls]
        together: dict[int, list[dict[str, Any]]] = {}
        threads = [threading.Thread(target=lambda i=i: together.__setitem__(
            i, engine.score(calls[i], ref))) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for i, lines in enumerate(alone):
        assert [line["uri"] for line in together[i]] == calls[i]
        assert [line["ok"] for line in together[i]] == [line["ok"] for line in lines]
        for a, b in zip(together[i], lines, strict=True):
            if a["ok"]:
                assert [e["index"] for e in a["top"]] == [e["index"] for e in b["top"]]


@pytest.mark.gpu
def test_scoring_on_cuda_agrees_with_the_cpu(
        settings: Settings, storage: Storage, registry: Registry) -> None:
    version = publish(registry, seed=1)
    uris = [f"img/{name}.jpg" for name in GOOD] + ["img/empty.jpg"]
    with Engine(settings, storage, registry) as engine:
        cpu = engine.score(uris, f"tiny@{version}")
    with Engine(dataclasses.replace(settings, device="cuda"), storage, registry) as engine:
        assert engine.device.type == "cuda"
        gpu = engine.score(uris, f"tiny@{version}")
    assert [line["ok"] for line in gpu] == [True] * 4 + [False]
    for a, b in zip(gpu[:4], cpu[:4], strict=True):
        assert a["model"] == b["model"] == f"tiny@{version}"
        assert a["top"][0]["index"] == b["top"][0]["index"]
        assert a["top"][0]["prob"] == pytest.approx(b["top"][0]["prob"], abs=1e-2)


class GatedModule(torch.nn.Module):
    """A real module whose forward waits for the test to open a gate."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.entered = threading.Event()
        self.gate = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return self.inner(x)


class CountingBackend(LocalBackend):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def read_versioned(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        self.reads.append(key)
        return super().read_versioned(key, max_bytes)


def test_one_call_fetches_while_another_call_is_on_the_device(
        settings: Settings, storage: Storage, registry: Registry) -> None:
    version = publish(registry, seed=1)
    ref = f"tiny@{version}"
    counting = CountingBackend(settings.storage_root)
    storage.local = counting
    with Engine(settings, storage, registry) as engine:
        predictor = engine.predictor_for(ref)
        gated = GatedModule(predictor.module)
        predictor.module = gated
        first = threading.Thread(target=engine.score, args=(["img/coffee.png.jpg"], ref))
        first.start()
        assert gated.entered.wait(30)  # the first call's forward is running, and held
        second_uris = [f"img/{name}.jpg" for name in GOOD]
        done: list[list[dict[str, Any]]] = []
        second = threading.Thread(target=lambda: done.append(engine.score(second_uris, ref)))
        second.start()
        deadline = time.monotonic() + 30
        while not set(second_uris) <= set(counting.reads) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert set(second_uris) <= set(counting.reads)  # fetched while the forward is held
        assert not done
        gated.gate.set()
        first.join(30)
        second.join(30)
    assert [line["ok"] for line in done[0]] == [True] * 4


class SlowBackend(LocalBackend):
    """Reads of one key wait for the test to let them through (a slow object on S3)."""

    def __init__(self, root: str, slow: str) -> None:
        super().__init__(root)
        self.slow, self.release = slow, threading.Event()

    def read_versioned(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        if key == self.slow:
            assert self.release.wait(30), "the test never released the slow read"
        return super().read_versioned(key, max_bytes)


def test_images_reach_the_batcher_as_each_is_decoded(
        settings: Settings, storage: Storage, registry: Registry) -> None:
    slow = SlowBackend(settings.storage_root, "img/coffee.png.jpg")
    storage.local = slow
    others = [f"img/{name}.jpg" for name in GOOD if name != "coffee.png"]
    uris = ["img/coffee.png.jpg", *others]
    done: list[list[dict[str, Any]]] = []
    with Engine(settings, storage, registry) as engine:
        engine.predictor_for("random:resnet18:classes=10")
        call = threading.Thread(target=lambda: done.append(
            engine.score(uris, "random:resnet18:classes=10")))
        call.start()
        deadline = time.monotonic() + 30
        while engine.batcher.stats()["images"] < len(others) and time.monotonic() < deadline:
            time.sleep(0.01)
        forwarded = engine.batcher.stats()["images"]
        slow.release.set()
        call.join(30)
    assert forwarded == len(others), "the decoded images ran while one was still fetched"
    assert [line["ok"] for line in done[0]] == [True] * len(uris)
