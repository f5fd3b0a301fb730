"""A worker's probes: a wedged model thread turns /healthz red; /readyz follows the model's
warm-up and the broker."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator

import pytest
import torch

from rstream.shared.endpoints import EndpointServer, probe_route
from rstream.worker.model.loader import load_model
from rstream.worker.model.predict import Predictor, Top
from rstream.worker.model.preprocess import Preprocessing
from rstream.worker.runtime.health import Health
from rstream.worker.runtime.warmup import Warmup
from rstream.worker.serving.batcher import Batcher
from tests.services import free_port, http_get
from tests.settings import make_settings

WEDGE_S = 1.0


class BlockingPredictor(Predictor):
    """A stand-in for a model thread that hangs (a driver call that never returns, a deadlock):
    a real small predictor whose ``predict`` blocks until the test opens ``gate``."""

    def __init__(self) -> None:
        loaded = load_model("random:resnet18:classes=3:seed=0")
        loaded = dataclasses.replace(loaded, preprocessing=Preprocessing(resize=36, crop=32))
        super().__init__(loaded, torch.device("cpu"), "fp32", topk=3)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def predict(self, images: torch.Tensor) -> list[Top]:
        self.entered.set()
        self.gate.wait(60)
        return super().predict(images)


@pytest.fixture
def blocking() -> Iterator[tuple[BlockingPredictor, Batcher]]:
    predictor = BlockingPredictor()
    batcher = Batcher(predictor, max_batch=4, max_delay_ms=1)
    yield predictor, batcher
    predictor.gate.set()
    batcher.close()


def test_a_wedged_model_thread_turns_healthz_red_and_green_again(
        blocking: tuple[BlockingPredictor, Batcher]) -> None:
    predictor, batcher = blocking
    health = Health(make_settings(wedge_timeout=WEDGE_S), lambda: batcher)
    server = EndpointServer("127.0.0.1", 0, {"/healthz": probe_route(health.liveness)}).start()
    try:
        status, body = http_get(f"{server.url}/healthz")
        assert (status, body["model_thread"]) == (200, "idle")

        futures = batcher.submit([torch.zeros(3, 32, 32, dtype=torch.uint8)] * 2)
        assert predictor.entered.wait(10)
        status, body = http_get(f"{server.url}/healthz")
        assert status == 200, "a forward within the limit is work, not a wedge"
        assert str(body["model_thread"]).startswith("working: forward of 2 images")

        time.sleep(WEDGE_S + 0.3)
        status, body = http_get(f"{server.url}/healthz")
        assert status == 503
        assert str(body["model_thread"]).startswith("wedged: forward of 2 images on "
                                                    "random:resnet18:classes=3:seed=0")

        predictor.gate.set()
        assert all(len(f.result(timeout=30).top) == 3 for f in futures)
        status, body = http_get(f"{server.url}/healthz")
        assert (status, body["model_thread"]) == (200, "idle")
    finally:
        server.close()


def test_images_left_waiting_behind_a_hung_batch_are_reported(
        blocking: tuple[BlockingPredictor, Batcher]) -> None:
    predictor, batcher = blocking
    batcher.submit([torch.zeros(3, 32, 32, dtype=torch.uint8)])
    assert predictor.entered.wait(10)
    batcher.submit([torch.zeros(3, 32, 32, dtype=torch.uint8)] * 3)
    time.sleep(WEDGE_S + 0.3)
    ok, details = batcher.liveness(WEDGE_S)
    assert not ok
    assert str(details["model_thread"]).startswith("wedged: forward of 1 images")
    assert details["waiting_images"] == 3


def test_a_process_that_scored_nothing_yet_is_alive() -> None:
    ok, details = Health(make_settings(), lambda: None).liveness()
    assert ok and "no chunk" in str(details["model_thread"])


def test_warmup_tries_again_until_the_model_loads() -> None:
    attempts: list[str] = []
    available = threading.Event()

    def load(ref: str) -> None:
        attempts.append(ref)
        if not available.is_set():
            raise FileNotFoundError(f"{ref} is not published yet")

    warmup = Warmup(load, "digits").start()
    try:
        deadline = time.monotonic() + 10
        while not attempts and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        loaded, state = warmup.status()
        assert not loaded
        assert state == "cannot load digits: FileNotFoundError: digits is not published yet"
        available.set()
        while not warmup.status()[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert warmup.status() == (True, "loaded digits")
        assert len(attempts) >= 2
    finally:
        warmup.stop()


def test_readyz_is_red_while_the_broker_does_not_answer_and_names_the_setting() -> None:
    url = f"redis://:secret-pw@127.0.0.1:{free_port()}/0"  # nothing listens there
    health = Health(make_settings(redis_url=url), lambda: None)
    health.started(["infer"], None)
    ok, details = health.readiness()
    assert not ok
    assert "RSTREAM_REDIS_URL" in str(details["broker"])
    assert "secret-pw" not in json.dumps(details), "the password is masked"
    assert details["consumer"] == "consuming"


def test_readyz_is_red_before_the_worker_consumes_and_once_it_shuts_down() -> None:
    health = Health(make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"),
                    lambda: None)
    assert health.readiness()[1]["consumer"].startswith("not consuming")
    health.started(["infer"], None)
    assert health.readiness()[1]["consumer"] == "consuming"
    health.stopping()
    assert health.readiness()[1]["consumer"].startswith("not consuming")


def test_readyz_waits_for_the_default_model_only_on_an_infer_worker() -> None:
    never = Warmup(lambda ref: None, "digits")  # not started: still loading
    health = Health(make_settings(), lambda: None)
    health.started(["infer"], never)
    assert health.readiness()[1]["model"] == "loading digits"
    trainer = Health(make_settings(), lambda: None)
    trainer.started(["train"], None)
    assert trainer.readiness()[1]["model"] == "not serving (queues train)"
