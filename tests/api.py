"""The HTTP API as the tests run it: ``rstream api`` in a uvicorn process of its own, and the
tokens and helpers its tests share (the ``api_stack`` fixture of tests/integration/conftest.py
starts one open and one guarded API beside a worker)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from rstream.shared.settings import Settings
from tests.services import REPO, free_port

READ, SUBMIT, ADMIN, SUBMIT_ONLY = ("r" * 20, "s" * 20, "a" * 20, "q" * 20)
TOKENS = f"{READ}:read,{SUBMIT}:read+submit,{ADMIN}:admin,{SUBMIT_ONLY}:submit"
WAIT_S = 180.0


class ApiProcess:
    """``python -m rstream.producer.cli api`` on a free port, with its log in a file."""

    def __init__(self, settings: Settings, log: Path, **env: str) -> None:
        self.port = free_port()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("RSTREAM_")}
        environ.update(settings.as_env())
        environ.update({"RSTREAM_API_PORT": str(self.port), **env})
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "rstream.producer.cli", "api"],
                                        cwd=REPO, env=environ, stdout=self._out,
                                        stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)
        self._out.close()


def poll_done(http: httpx.Client, job: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        view = http.get(f"/v1/jobs/{job}").json()
        if view["finished"]:
            return view
        assert time.monotonic() < deadline, view
        time.sleep(0.3)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTREAM_")}
    env.update(settings.as_env())
    return subprocess.run([sys.executable, "-m", "rstream.producer.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def cells(html: str, cls: str, tag: str = "td") -> list[str]:
    start = f'<{tag} class="{cls}">'
    return [part.split("<", 1)[0] for part in html.split(start)[1:]]


def render_page(chromium: str, url: str, tmp_path: Path, screenshot: Path | None = None,
                height: int = 1500) -> str:
    """The page after its scripts ran (virtual time lets the fetches finish)."""
    profile = tmp_path / f"profile-{uuid.uuid4().hex[:6]}"
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=8000",
            f"--window-size=1280,{height}"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    result = subprocess.run([*args, url], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout

