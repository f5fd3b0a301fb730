"""What the pipeline tests share: their settings, a tiny registry model, image sets (real
photos in mixed sizes and formats, plus bad files), and the one-line-per-URI check."""

from __future__ import annotations

import io
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage, join
from rstream.worker.samples import variants
from tests.services import publish_random_model
from tests.settings import make_settings

WAIT_S = 240.0


def save_tiny_model(settings: Settings, name: str = "tiny") -> str:
    return publish_random_model(settings, name)


def pipeline_settings(redis_url: str, root: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "redis_url": redis_url, "storage_root": str(root), "chunk_size": 16, "max_batch": 32,
        "max_delay_ms": 20.0, "decode_threads": 4, "concurrency": 2, "device": "cpu",
        "task_time_limit": 60, "visibility_timeout": 120, "max_pending_chunks": 0,
        "reload_interval": 1.0,
        # Eager by default here: each new registry version would cost an ONNX export (tens of
        # seconds on two cores); the module's own worker below runs the default (auto: ONNX).
        "backend": "eager"}
    base.update(overrides)
    return make_settings(**base)


def assert_one_line_per_uri(client: Client, job: str, uris: list[str]) -> list[dict[str, Any]]:
    lines = list(monitor.results(client.jobs, client.storage, job))
    seen = Counter(line["uri"] for line in lines)
    assert sorted(seen) == sorted(uris), "every URI has a line and no other line exists"
    assert max(seen.values()) == 1, f"reported twice: {[u for u, n in seen.items() if n > 1]}"
    return lines


def good_images(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``count`` (name, bytes) pairs: crops of real photos, 48 to 400 px, JPEG or PNG."""
    return list(variants(count, seed=seed))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` but holds almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def bad_images() -> list[tuple[str, bytes]]:
    """Ten files that must each give an error line, of different kinds."""
    jpeg = io.BytesIO()
    Image.new("RGB", (120, 90), (200, 10, 10)).save(jpeg, "JPEG")
    full = jpeg.getvalue()
    tiff = io.BytesIO()
    Image.new("RGB", (32, 32)).save(tiff, "TIFF")
    return [
        ("bad-empty.jpg", b""),
        ("bad-truncated.jpg", full[: len(full) // 3]),
        ("bad-corrupt.jpg", full[:20] + bytes(range(256)) * 4),
        ("bad-text.jpg", b"this is not an image, it is a sentence.\n" * 10),
        ("bad-eps.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"),
        ("bad-pdf.pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"),
        ("bad-bomb.png", _png_header_only(100_000, 100_000)),
        ("bad-tiff.tif", tiff.getvalue()),
        ("bad-html.png", b"<html><body>404 Not Found</body></html>"),
        ("bad-zeros.png", b"\x00" * 2048),
    ]


def write_dataset(storage: Storage, prefix: str, good: int = 190, seed: int = 0) -> list[str]:
    """Write ``good`` photos and the ten bad files under ``prefix``; returns every URI."""
    uris = []
    for name, blob in good_images(good, seed) + bad_images():
        uri = join(prefix, name)
        storage.write(uri, blob)
        uris.append(uri)
    return sorted(uris)
