"""The wheel installs one name: built from this checkout (the ``wheel`` fixture of
tests/integration/conftest.py) and installed into a fresh venv
outside it, it provides ``rstream`` and nothing else at the top of site-packages; the
worker's Celery app imports as ``rstream.worker.app``, while ``shared``, ``worker`` and
``producer`` do not import at all.

The fresh venv takes its dependencies (torch among them) from the test run's own environment
through a ``.pth`` line, so nothing large is installed: a path added that way is not a site
directory, so the run's own editable install of rstream does not reach the new venv.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest


def _run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RSTREAM_", "PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)





@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fresh") / "venv"
    assert _run(sys.executable, "-m", "venv", str(root), cwd=root.parent).returncode == 0
    site = next((root / "lib").glob("python3*/site-packages"))
    (site / "deps-of-the-test-run.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = _run(str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                     str(wheel), cwd=root.parent)
    assert installed.returncode == 0, installed.stderr
    return root


def test_the_wheel_holds_rstream_and_its_metadata_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
        names = set(archive.namelist())
    assert tops == {"rstream", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "rstream/worker/app.py" in names and "rstream/producer/api/dashboard.html" in names
    assert not any(n.startswith("rstream/__init__") for n in names), "rstream is a namespace"


def test_the_installed_wheel_imports_as_rstream_only(venv: Path) -> None:
    python = str(venv / "bin" / "python")
    where = venv.parent  # outside the checkout: the checkout's folders are not on the path
    app = _run(python, "-c", "import rstream.worker.app as a; print(a.__file__, a.app.main)",
               cwd=where, timeout=300)
    assert app.returncode == 0, app.stderr[-3000:]
    assert app.stdout.startswith(str(venv)), "the installed copy, not the checkout"
    for name in ("shared", "worker", "producer"):
        result = _run(python, "-c", f"import {name}", cwd=where)
        assert "ModuleNotFoundError" in result.stderr, (name, result.stderr)
    cli = _run(str(venv / "bin" / "rstream"), "--version", cwd=where)
    assert cli.returncode == 0 and cli.stdout.startswith("rstream "), cli.stderr
