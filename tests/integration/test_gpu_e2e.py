"""bench/gpu_e2e.sh --smoke: the GPU decode issue's device script, run whole on the CPU, so
that it is known to work before GPU time is spent on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_device_script_runs_whole_in_smoke_mode_and_writes_every_figure(
        tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", "bench/gpu_e2e.sh", "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_e2e.json").read_text())

    assert report["smoke"] is True and report["targets"]["judged"] is False
    for step in ("forward", "repeat_check", "agreement", "e2e", "cuda_tests"):
        assert "error" not in report[step], (step, report[step])
    assert report["repeat_check"]["ok"] and report["repeat_check"]["repeats"] == 3
    assert {v["share"] for k, v in report["agreement"].items() if k != "seconds"} == {1.0}
    runs = {k: v for k, v in report["e2e"].items() if k != "seconds"}
    assert set(runs) == {"resnet18_500x375_cpu", "resnet18_500x375_batched"}
    for key, run in runs.items():
        assert run["summary"]["images_per_s"]["rstream"] > 0, key
    assert runs["resnet18_500x375_cpu"]["summary"]["images_per_s"]["dataloader"] > 0
    assert report["cuda_tests"]["exit"] in (0, 5), report["cuda_tests"]
