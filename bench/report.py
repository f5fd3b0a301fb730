"""How a benchmark reports: the machine it ran on and its JSON, printed and written to a file.

Standard library only, so that a script run on a bare GPU image (no Redis, no Celery, no
test fixtures) reports the same way as the others."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, object]:
    """Cores, CPU model and Python of this machine, for the JSON output."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_count": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def emit(report: dict[str, Any], out: str | None) -> None:
    """Print a benchmark's JSON report, and write it to ``out`` too when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
