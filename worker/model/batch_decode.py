"""Batched JPEG decode on the model's device: raw bytes in, the model's normalized input out.

``RSTREAM_DECODE_DEVICE`` (see :func:`decodes_in_batches`) chooses where JPEGs are decoded:

- ``cpu`` (and ``auto``, until a GPU has measured the device path): each decode thread decodes
  its image whole (``preprocess.decode_image``) and the batcher receives uint8 crops.
- ``cuda``: decode threads only fetch and read the header (:func:`admit`); the batcher hands a
  batch of JPEG bytes to :func:`preprocess_batch`, which decodes them with one batched
  ``torchvision.io.decode_jpeg`` call on the model's CUDA device (nvJPEG), then resizes
  (shorter side, antialiased), center-crops and normalizes there, in the model's dtype and
  memory format.
- ``batched``: the same code on whatever device serves, the CPU included. Slower than ``cpu``
  on a CPU (one thread decodes the whole batch); it exists so that CI and the device script's
  ``--smoke`` mode run the very code the GPU runs.

What the device decoder is not given, and decoded on the CPU in the fetch thread as before
(:func:`device_refusal` says why; the result lines do not, ``rstream_decode_path_total``
counts each path): non-JPEG files, CMYK and other modes beyond RGB and grayscale, progressive
JPEGs, images with an EXIF orientation (nvJPEG does not apply it), and specs that are not
bilinear or crop beyond the resize (zero padding).

One undecodable image makes a batched ``decode_jpeg`` call fail as a whole (torchvision
documents it): the batch is split in halves until the bad image is alone, and an image the
device refuses alone is decoded on the CPU (``fallback`` in the metric), so only an image
that no decoder takes gets an error line, with the CPU decoder's reason.

On CUDA the decode runs on a stream of its own, and the model's stream waits for it
explicitly: the CUDA decode has written into memory that the caller's stream was still using
on H100-class GPUs (pytorch/vision issue 9606). The uint8 crops decoded on the CPU reach the
device through pinned staging buffers allocated once per predictor and reused
(:class:`Staging`). The batcher prepares one batch here while the previous one is in the
forward (worker/serving/batcher.py).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import ExifTags, Image, JpegImagePlugin
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

from rstream.shared.errors import ConfigError, ImageError
from rstream.worker.model.preprocess import (
    Preprocessing,
    decode_image,
    decode_opened,
    error_reason,
    normalize,
    read_header,
    resize_crop,
)
from rstream.worker.runtime import metrics

DECODE_DEVICES = ("auto", "cpu", "cuda", "batched")


@dataclass(frozen=True)
class Raw:
    """A JPEG whose header was read and allowed, waiting for the batched decoder."""

    data: bytes
    max_pixels: int  # for the CPU fallback, which checks the header again


def decodes_in_batches(setting: str, device: torch.device) -> bool:
    """Whether ``RSTREAM_DECODE_DEVICE`` sends JPEGs to :func:`preprocess_batch` on ``device``.

    ``auto`` is ``cpu`` everywhere until a GPU run decides otherwise (README, "GPU decode").
    """
    if setting not in DECODE_DEVICES:
        raise ConfigError(f"RSTREAM_DECODE_DEVICE={setting!r} is invalid: use "
                          f"{', '.join(DECODE_DEVICES)}")
    if setting == "cuda" and device.type != "cuda":
        raise ConfigError(f"RSTREAM_DECODE_DEVICE=cuda but the model serves on {device}: set "
                          "RSTREAM_DEVICE=cuda, or RSTREAM_DECODE_DEVICE=cpu")
    return setting in ("cuda", "batched")


def device_refusal(img: Image.Image, spec: Preprocessing) -> str:
    """Why the device decoder is not given this image ("" when it is)."""
    if not isinstance(img, JpegImagePlugin.JpegImageFile):
        return f"{img.format} is not a JPEG"
    if img.mode not in ("RGB", "L"):
        return f"a {img.mode} JPEG"
    if img.info.get("progressive") or img.info.get("progression"):
        return "a progressive JPEG"
    if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        return "an EXIF orientation"
    if spec.interpolation != "bilinear" or spec.crop > spec.resize:
        return "a spec the device path does not follow"
    return ""


def admit(data: bytes, spec: Preprocessing, max_pixels: int) -> Tensor | Raw:
    """In a fetch thread: the header is read (and refused as ``decode_image`` refuses it); a
    JPEG the device decoder takes comes back as :class:`Raw`, anything else decoded on the CPU
    (a uint8 ``[3, crop, crop]`` crop, counted by the caller)."""
    img = read_header(data, max_pixels)
    if device_refusal(img, spec):
        return decode_opened(img, data, spec)
    return Raw(data, max_pixels)


class Staging:
    """Pinned buffers for the CPU-decoded crops of a batch: two, allocated once (grown only
    when a larger batch comes) and used in turn. A buffer is written again only after the
    copy out of it has run (a CUDA event per buffer), so the batch being staged never
    overwrites the one still crossing while the previous batch is in the forward."""

    SLOTS = 2

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._slots: list[tuple[Tensor, torch.cuda.Event] | None] = [None] * self.SLOTS
        self._next = 0
        self._lock = threading.Lock()

    def to_device(self, crops: Sequence[Tensor]) -> Tensor:
        """The crops stacked on the device: ``[N, 3, H, W]`` uint8."""
        if self.device.type != "cuda":
            return torch.stack(list(crops))
        shape = (len(crops), *crops[0].shape)
        with self._lock:
            index, self._next = self._next, (self._next + 1) % self.SLOTS
            slot = self._slots[index]
            if slot is not None:
                slot[1].synchronize()  # the last copy out of this buffer has run
            if slot is None or slot[0].shape[0] < len(crops) or slot[0].shape[1:] != shape[1:]:
                slot = (torch.empty(shape, dtype=torch.uint8, pin_memory=True),
                        torch.cuda.Event())
                self._slots[index] = slot
            buffer, copied = slot
            staged = torch.stack(list(crops), out=buffer[:len(crops)])
            on_device = staged.to(self.device, non_blocking=True)
            copied.record(torch.cuda.current_stream(self.device))
            return on_device


def preprocess_batch(items: Sequence[Tensor | Raw], spec: Preprocessing, device: torch.device,
                     *, dtype: torch.dtype = torch.float32,
                     memory_format: torch.memory_format = torch.channels_last,
                     staging: Staging | None = None,
                     stream: torch.cuda.Stream | None = None,
                     ) -> tuple[Tensor | None, list[ImageError | None]]:
    """The model's input for a batch of :class:`Raw` JPEGs and CPU-decoded uint8 crops.

    Returns the normalized ``[M, 3, crop, crop]`` batch on ``device`` in ``dtype`` and
    ``memory_format`` (None when no image decoded), holding the images that decoded in input
    order, and one entry per input: None for an image in the batch, its ImageError otherwise.
    """
    raws = [i for i, item in enumerate(items) if isinstance(item, Raw)]
    decoded = _decode_on(device, [items[i] for i in raws], spec, stream)  # type: ignore[misc]
    crops: list[Tensor | None] = [None if isinstance(item, Raw) else item for item in items]
    errors: list[ImageError | None] = [None] * len(items)
    for index, result in zip(raws, decoded, strict=True):
        if isinstance(result, ImageError):
            errors[index] = result
        else:
            crops[index] = result
    ready = [crop for crop in crops if crop is not None]
    if device.type != "cpu":  # the crops decoded on the CPU cross in one copy
        on_cpu = [crop for crop in ready if crop.device.type == "cpu"]
        moved = iter((staging or Staging(device)).to_device(on_cpu) if on_cpu else ())
        ready = [next(moved) if crop.device.type == "cpu" else crop for crop in ready]
    if not ready:
        return None, errors
    batch = normalize(torch.stack(ready), spec, dtype)
    return batch.contiguous(memory_format=memory_format), errors


def _decode_on(device: torch.device, raws: list[Raw], spec: Preprocessing,
               stream: torch.cuda.Stream | None) -> list[Tensor | ImageError]:
    """uint8 crops on ``device`` (or the reason) for each JPEG; on CUDA on ``stream``, which
    the current stream then waits for."""
    if not raws:
        return []
    if device.type != "cuda":
        return _decode_split(raws, spec, device)
    stream = stream or torch.cuda.Stream(device)
    current = torch.cuda.current_stream(device)
    stream.wait_stream(current)  # buffers the current stream freed may be reused by the decode
    with torch.cuda.stream(stream):
        results = _decode_split(raws, spec, device)
    current.wait_stream(stream)
    for result in results:
        if isinstance(result, Tensor) and result.device.type == "cuda":
            result.record_stream(current)
    return results


def _decode_split(raws: list[Raw], spec: Preprocessing,
                  device: torch.device) -> list[Tensor | ImageError]:
    """Decode all at once; on failure, each half alone; an image refused alone goes to the
    CPU decoder."""
    try:
        pixels = decode_jpeg([torch.frombuffer(bytearray(raw.data), dtype=torch.uint8)
                              for raw in raws], mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        if len(raws) > 1:
            half = len(raws) // 2
            return _decode_split(raws[:half], spec, device) + \
                _decode_split(raws[half:], spec, device)
        return [_on_the_cpu(raws[0], spec, device, error_reason(exc))]
    metrics.DECODE_PATH.labels("device").inc(len(raws))
    return [resize_crop(image, spec) for image in pixels]


def _on_the_cpu(raw: Raw, spec: Preprocessing, device: torch.device,
                refusal: str) -> Tensor | ImageError:
    try:
        crop = decode_image(raw.data, spec, raw.max_pixels)
    except ImageError as exc:
        return exc
    except Exception as exc:  # a library surprise fails this image, as in the fetch threads
        return ImageError(f"undecodable JPEG: {exc} (the device decoder said: {refusal})")
    metrics.DECODE_PATH.labels("fallback").inc()
    return crop.to(device)
