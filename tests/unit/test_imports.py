"""``producer`` and ``shared`` import, and ``rstream config`` runs, where torch, torchvision
and PIL cannot load. (tests/integration/test_submit_host.py runs the real console script in
a venv that has none of them, against a real Redis.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Every module of the submission side, found on disk, so a new one is covered too.
TORCH_FREE = sorted(
    "rstream." + ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for package in ("producer", "shared") for path in (ROOT / package).rglob("*.py")
    if path.name != "__main__.py")

# Installed before anything else runs: any attempt to import torch, torchvision or PIL, even
# one that some library catches, is recorded in BLOCKED and fails with ImportError.
BLOCKER = """
import sys
BLOCKED = []
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "PIL"):
            BLOCKED.append(name)
            raise ImportError(f"{name} is blocked by this test")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def _run(code: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTREAM_")}
    env.update(settings)
    return subprocess.run([sys.executable, "-c", BLOCKER + code], check=False, cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ["torch", "torchvision", "PIL"])
def test_the_blocker_does_block(module: str) -> None:
    result = _run(f"import {module}")
    assert result.returncode != 0
    assert f"{module} is blocked by this test" in result.stderr


def test_producer_and_shared_import_without_torch() -> None:
    result = _run(
        "import importlib, json\n"
        f"for name in {TORCH_FREE!r}: importlib.import_module(name)\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'PIL')]\n"
        "print(json.dumps({'blocked': BLOCKED, 'loaded': loaded}))\n")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"blocked": [], "loaded": []}


@pytest.mark.parametrize("args", [["config"], ["config", "--markdown"]])
def test_rstream_config_runs_without_torch(args: list[str]) -> None:
    result = _run(
        "from rstream.producer.cli import main\n"
        f"code = main({args!r})\n"
        "assert not BLOCKED, BLOCKED\n"
        "sys.exit(code)\n")
    assert result.returncode == 0, result.stderr
    assert "RSTREAM_REDIS_URL" in result.stdout
