"""How far a reader walks to follow one job id from ``rstream submit`` to its sent chunks.

Runs ``rstream submit FOLDER --job ID`` in this process against a private redis-server and
local storage, records every call into rstream's own code (``sys.setprofile``; module bodies
run at import are left out), and reports the walk as a reader of the code would take it:
the files entered, the returns (entering a file already left), and the crossings between
``producer/`` and ``shared/``. Prints JSON.

    python -m bench.walk [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WINGS = ("producer", "shared", "worker")


def _main_function() -> Any:
    from rstream.producer.cli import main

    return main


def walk(files: list[str]) -> dict[str, Any]:
    """The figures of a sequence of files, consecutive repeats collapsed."""
    steps = [f for i, f in enumerate(files) if i == 0 or files[i - 1] != f]
    seen: set[str] = set()
    returns = 0
    for step in steps:
        returns += step in seen
        seen.add(step)
    wings = [s.split("/")[0] for s in steps]
    crossings = sum(1 for a, b in itertools.pairwise(wings) if {a, b} == {"producer", "shared"})
    return {"files_entered": len(seen), "returns": returns,
            "producer_shared_crossings": crossings, "steps": len(steps), "path": steps}


def _carries(value: Any, job: str) -> bool:
    """Whether an argument is the job id, holds it (a key, a URI) or is a record of it."""
    if isinstance(value, str):
        return job in value
    return job in (getattr(value, "job", None), getattr(value, "id", None))


def record(argv: list[str], job: str) -> tuple[list[str], list[str]]:
    """The rstream files whose functions ran while ``main(argv)`` ran, in call order: all of
    them, and those called with the job id (or a key, URI or record that carries it)."""
    main = _main_function()
    found: list[str] = []
    with_job: list[str] = []
    roots = {str(REPO / wing) + os.sep: wing for wing in WINGS}

    def profile(frame: FrameType, event: str, _: Any) -> None:
        if event != "call" or frame.f_code.co_name == "<module>":
            return
        name = frame.f_code.co_filename
        for root in roots:
            if name.startswith(root):
                found.append(os.path.relpath(name, REPO))
                if any(_carries(v, job) for v in frame.f_locals.values()):
                    with_job.append(found[-1])
                return

    sys.setprofile(profile)
    try:
        code = main(argv)
    finally:
        sys.setprofile(None)
    if code != 0:
        raise SystemExit(f"rstream {' '.join(argv)} exited {code}")
    return found, with_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the JSON report here")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from bench.report import emit
    from bench.services import redis_server

    with redis_server() as (url, _), tempfile.TemporaryDirectory() as root:
        folder = Path(root, "images")
        folder.mkdir()
        for i in range(3):
            (folder / f"{i}.jpg").write_bytes(b"not decoded at submit")
        os.environ.update({"RSTREAM_REDIS_URL": url, "RSTREAM_STORAGE_ROOT": root,
                           "RSTREAM_MODEL": "random:resnet18", "RSTREAM_CHUNK_SIZE": "64"})
        _main_function()(["submit", "images", "--job", "walk-warm-up"])  # imports happen here
        every, with_job = record(["submit", "images", "--job", "walk-1"], "walk-1")
    emit({"benchmark": "walk", "command": "rstream submit images --job walk-1",
          "calls_with_the_job_id": walk(with_job), "every_call": walk(every)}, args.out)


if __name__ == "__main__":
    main()
