"""int8 on the CPU: ONNX Runtime static quantization (QDQ, per-channel weights), calibrated on
images the user names, cached next to the fp32 ONNX export, and gated on its measured agreement.

A calibration set is a folder (prefix) of images or a file listing URIs (one a line, or JSONL
lines with ``"uri"``); by default a version's recorded quantization (``rstream models
quantize``), else its validation split when it came from ``rstream train``. Its images are
split by position: four in five calibrate the activation ranges, every fifth is held out, and
the int8 model's top-1 class is compared with the fp32 model's on those. The record of that
measurement (agreement, largest probability difference, speed-up) is written beside the int8
file, ``model-int8-{key}.onnx`` + ``.json``, where ``key`` hashes the calibration images (URI
and ETag) and the fp32 export, so another set, or changed images, is another file. A worker
refuses an int8 model whose agreement is below ``RSTREAM_INT8_MIN_AGREEMENT``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rstream.shared.errors import ConfigError, NotFoundError, RstreamError
from rstream.shared.models.registry import Registry
from rstream.shared.storage import Storage
from rstream.shared.training.splits import IMAGE_EXTENSIONS, is_validation
from rstream.worker.model.loader import LoadedModel
from rstream.worker.model.model_files import ModelFiles
from rstream.worker.model.preprocess import decode_image, normalize

logger = logging.getLogger(__name__)

MIN_IMAGES = 10  # fewer cannot both calibrate and measure
MAX_CALIBRATION = 256  # images that calibrate; more add time, not accuracy
MAX_HELD_OUT = 256
HOLD_OUT_EVERY = 5
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class Calibration:
    """A calibration set: where it came from, its image URIs (sorted), and its cache key."""

    source: str
    uris: tuple[str, ...]
    key: str

    @property
    def parts(self) -> tuple[list[str], list[str]]:
        """(calibration URIs, held-out URIs): every fifth held out, each part capped."""
        held = [u for i, u in enumerate(self.uris) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1]
        calib = [u for i, u in enumerate(self.uris) if i % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1]
        return calib[:MAX_CALIBRATION], held[:MAX_HELD_OUT]


def calibration_set(storage: Storage, source: str, onnx_fp32: bytes) -> Calibration:
    """The images of ``source`` (a prefix, or a .txt / .jsonl list of URIs) and their key."""
    tagged = _list_source(storage, source)
    return _keyed(source, tagged, onnx_fp32)


def validation_split(storage: Storage, meta: dict[str, Any], onnx_fp32: bytes
                     ) -> Calibration | None:
    """The validation split of a version trained by ``rstream train``, when its meta says
    where the data was and how it was split; None otherwise."""
    training = meta.get("training")
    if not isinstance(training, dict) or not isinstance(training.get("data"), str):
        return None
    val_percent = (training.get("config") or {}).get("val_percent")
    if not isinstance(val_percent, int):
        return None
    data = training["data"]
    tagged = [(uri, tag) for uri, tag in _list_source(storage, data)
              if is_validation(uri, val_percent)]
    return _keyed(f"{data} (validation split, {val_percent}%)", tagged, onnx_fp32)


def _keyed(source: str, tagged: Sequence[tuple[str, str]], onnx_fp32: bytes) -> Calibration:
    if len(tagged) < MIN_IMAGES:
        raise ConfigError(f"calibration set {source} has {len(tagged)} images; int8 needs at "
                          f"least {MIN_IMAGES} (a few hundred like the ones you score is "
                          "better): name a bigger folder or list")
    digest = hashlib.sha256(hashlib.sha256(onnx_fp32).digest())
    for uri, tag in sorted(tagged):
        digest.update(f"{uri}\0{tag}\n".encode())
    return Calibration(source, tuple(sorted(u for u, _ in tagged)), digest.hexdigest()[:16])


def _list_source(storage: Storage, source: str) -> list[tuple[str, str]]:
    """(URI, ETag or size) of each image of ``source``."""
    if source.endswith((".txt", ".jsonl")):
        uris = []
        for number, line in enumerate(storage.read_lines(source), start=1):
            text = line.strip()
            if not text:
                continue
            if source.endswith(".jsonl"):
                try:
                    text = str(json.loads(text)["uri"])
                except (ValueError, KeyError, TypeError):
                    raise ConfigError(f"{source} line {number}: not a JSON object with "
                                      "\"uri\": fix that line") from None
            uris.append(text)
        return [(uri, _tag(storage, uri)) for uri in uris]
    base = source.rstrip("/") + "/"
    return [(info.key, info.etag or str(info.size)) for info in storage.list_info(base)
            if info.key.lower().endswith(IMAGE_EXTENSIONS)
            and not info.key.rsplit("/", 1)[-1].startswith(".")]


def _tag(storage: Storage, uri: str) -> str:
    try:
        info = storage.stat(uri)
    except NotFoundError:
        raise ConfigError(f"calibration image {uri} does not exist: fix the list") from None
    return info.etag or str(info.size)


def load_images(storage: Storage, uris: Sequence[str], loaded: LoadedModel,
                max_pixels: int) -> torch.Tensor:
    """The normalized float batch the model sees for ``uris``; undecodable images skipped."""
    tensors = []
    for uri in uris:
        try:
            tensors.append(decode_image(storage.read(uri), loaded.preprocessing, max_pixels))
        except RstreamError as exc:
            logger.warning("calibration: %s skipped (%s)", uri, exc)
    if not tensors:
        raise ConfigError("no calibration image could be decoded: name images the model "
                          "can read")
    return normalize(torch.stack(tensors), loaded.preprocessing)


def quantize(onnx_fp32: bytes, calibration: torch.Tensor) -> bytes:
    """``onnx_fp32`` statically quantized: QDQ, int8 per-channel weights, uint8 activations
    whose ranges (min/max) come from ``calibration`` (normalized ``[N, 3, H, W]``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        """The calibration batches; ``set_range`` picks the ones the next pass reads."""

        def __init__(self) -> None:
            self._all = list(calibration.split(CALIBRATION_BATCH))
            self._batches = iter(self._all)

        def __len__(self) -> int:
            return len(self._all)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._batches = iter(self._all[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"x": batch.contiguous().numpy()}

    with tempfile.TemporaryDirectory(prefix="rstream-int8-") as tmp:
        fp32, pre, int8 = (os.path.join(tmp, name) for name in ("fp32.onnx", "pre.onnx",
                                                                 "int8.onnx"))
        Path(fp32).write_bytes(onnx_fp32)
        quant_pre_process(fp32, pre, skip_symbolic_shape=True)  # folds BN, fuses, infers shapes
        # uint8 activations with int8 weights (U8S8) is ONNX Runtime's fast pair on x86.
        # A stride of one batch folds each batch's ranges into the running min/max, so memory
        # stays that of one batch's activations (CalibMaxIntermediateOutputs, in 1.32, drops
        # the batches it clears instead of folding them in).
        quantize_static(pre, int8, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"CalibStridedMinMax": 1})
        return Path(int8).read_bytes()


def session(data: bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for ``data``."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def measure(fp32: Any, int8: Any, held_out: torch.Tensor, repeats: int = 3) -> dict[str, Any]:
    """int8 against fp32 on ``held_out``: top-1 agreement, largest probability difference,
    and the speed-up (best of ``repeats`` alternated runs of each, same batch)."""
    x = held_out.contiguous().numpy()
    p32 = torch.softmax(torch.from_numpy(fp32.run(None, {"x": x})[0]).float(), 1)
    p8 = torch.softmax(torch.from_numpy(int8.run(None, {"x": x})[0]).float(), 1)
    best = {"fp32": float("inf"), "int8": float("inf")}
    batch = x[:64]
    for _ in range(repeats):
        for name, sess in (("fp32", fp32), ("int8", int8)):
            start = time.perf_counter()
            sess.run(None, {"x": batch})
            best[name] = min(best[name], time.perf_counter() - start)
    agree = int((p32.argmax(1) == p8.argmax(1)).sum())
    return {"held_out": len(x), "top1_agree": agree,
            "top1_agreement": round(agree / len(x), 4),
            "max_prob_diff": round(float((p32 - p8).abs().max()), 4),
            "speedup_vs_fp32": round(best["fp32"] / best["int8"], 2),
            "speed_batch": len(batch), "threads": torch.get_num_threads()}


def build(loaded: LoadedModel, onnx_fp32: bytes, calib: Calibration, storage: Storage,
          max_pixels: int) -> tuple[bytes, dict[str, Any]]:
    """The int8 model of ``loaded`` calibrated on ``calib``, and its record."""
    import onnxruntime

    started = time.monotonic()
    calib_uris, held_uris = calib.parts
    int8 = quantize(onnx_fp32, load_images(storage, calib_uris, loaded, max_pixels))
    held = load_images(storage, held_uris, loaded, max_pixels)
    record = {"model": loaded.model_id, "calibration": {
                  "source": calib.source, "key": calib.key, "images": len(calib_uris)},
              **measure(session(onnx_fp32), session(int8), held),
              "onnxruntime": onnxruntime.__version__,
              "build_s": round(time.monotonic() - started, 1),
              "created_at": datetime.now(UTC).isoformat()}
    return int8, record


def check(record: dict[str, Any], minimum: float, ref: str) -> None:
    """Refuse an int8 model that agrees with fp32 less than ``minimum``, saying what to do."""
    agreement = float(record.get("top1_agreement", 0.0))
    if agreement >= minimum:
        return
    calib = record.get("calibration") or {}
    raise ConfigError(
        f"{record.get('model', ref)}: its int8 model, calibrated on {calib.get('images')} "
        f"images of {calib.get('source')}, keeps fp32's top-1 class on {agreement:.1%} of "
        f"{record.get('held_out')} held-out images, below RSTREAM_INT8_MIN_AGREEMENT={minimum}: "
        f"calibrate on more images like the ones you score (rstream models quantize {ref} "
        "--calibration SOURCE, a few hundred covering every class and kind of image), or "
        "serve fp32 (RSTREAM_PRECISION=fp32)")


def _cached(files: ModelFiles, key: str) -> tuple[bytes, dict[str, Any]] | None:
    """The int8 bytes and record for calibration ``key``, if built before."""
    data, text = files.read(f"model-int8-{key}.onnx"), files.read(f"model-int8-{key}.json")
    if data is None or text is None:
        return None
    return data, json.loads(text)


def _keep(files: ModelFiles, key: str, data: bytes, record: dict[str, Any]) -> None:
    """The record goes last, so a record always has its model beside it."""
    files.keep(f"model-int8-{key}.onnx", data)
    files.keep(f"model-int8-{key}.json", json.dumps(record, indent=2).encode())


def int8_model(loaded: LoadedModel, onnx_fp32: bytes, *, registry: Registry | None,
               storage: Storage, source: str, max_pixels: int
               ) -> tuple[bytes, dict[str, Any]]:
    """The int8 model of ``loaded`` and its record: the cached one for the calibration set,
    else built now and cached. ``source`` empty: the version's recorded quantization, else
    its validation split."""
    files = ModelFiles(loaded, registry)
    recorded = loaded.meta.get("int8")
    if not source and isinstance(recorded, dict) and isinstance(recorded.get("key"), str):
        found = _cached(files, recorded["key"])
        if found is not None:
            return found
        logger.warning("%s: the recorded int8 model %s is missing; building it again",
                       loaded.model_id, recorded["key"])
        source = str(recorded.get("calibration", ""))  # empty: the validation split
    if source:
        calib = calibration_set(storage, source, onnx_fp32)
    else:
        split = validation_split(storage, loaded.meta, onnx_fp32)
        if split is None:
            raise ConfigError(
                f"RSTREAM_PRECISION=int8 needs calibration images for {loaded.model_id}: set "
                f"RSTREAM_CALIBRATION to a folder or list of images like the ones you score, "
                f"or build it ahead with rstream models quantize {loaded.model_id} "
                "--calibration SOURCE")
        calib = split
    found = _cached(files, calib.key)
    if found is not None:
        return found
    logger.info("%s: quantizing to int8 on %d images of %s", loaded.model_id,
                len(calib.parts[0]), calib.source)
    data, record = build(loaded, onnx_fp32, calib, storage, max_pixels)
    _keep(files, calib.key, data, record)
    return data, record
