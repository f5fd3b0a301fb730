"""Headless Chromium driven over the DevTools protocol (``--remote-debugging-pipe``), so that a
test can click the dashboard's controls and read what the page shows afterwards.

No driver library: the protocol is JSON messages ended by a NUL byte on two pipes, which
Chromium reads on fd 3 and writes on fd 4.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

REPLY_SECONDS = 60


class BrowserError(RuntimeError):
    pass


class Browser:
    """One Chromium process with one page; use as a context manager."""

    def __init__(self, chromium: str, profile: Path, width: int = 1280, height: int = 1500):
        to_chrome, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome = os.pipe()

        # bash (dash takes no fd above 9) puts the pipes on fds 3 and 4, for Chromium.
        self._proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_chrome} 4>&{from_chrome}', chromium,
             "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--remote-debugging-pipe", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            pass_fds=(to_chrome, from_chrome),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._ids = itertools.count(1)
        self._pending = b""
        self._session = ""

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_: object) -> None:
        self._proc.kill()
        self._proc.wait(timeout=30)
        os.close(self._to_chrome)
        os.close(self._from_chrome)

    def open(self, url: str) -> None:
        target = self._call("Target.createTarget", url=url)["targetId"]
        self._session = self._call("Target.attachToTarget", targetId=target,
                                   flatten=True)["sessionId"]

    def run(self, script: str) -> Any:
        """The value of a JavaScript expression in the page (awaited when a promise)."""
        reply = self._call("Runtime.evaluate", session=self._session, expression=script,
                           awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in reply:
            raise BrowserError(f"{script!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, script: str, timeout: float = 30.0) -> Any:
        """Polls a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.run(script)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"{script!r} was still {value!r} after {timeout:.0f} s; "
                                   f"the page: {self.dom()[:2000]}")
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        found = self.run(f"(() => {{ const n = document.querySelector({json.dumps(selector)});"
                         " if (n) n.click(); return !!n; })()")
        if not found:
            raise BrowserError(f"nothing on the page matches {selector!r}")

    def choose(self, selector: str, value: str) -> None:
        """Sets a <select> to ``value`` as a person would: the page's change handler runs."""
        self.run(f"(() => {{ const n = document.querySelector({json.dumps(selector)});"
                 f" n.value = {json.dumps(value)};"
                 " n.dispatchEvent(new Event('change')); })()")

    def dom(self) -> str:
        return str(self.run("document.documentElement.outerHTML"))

    def _call(self, method: str, session: str = "", **params: Any) -> dict[str, Any]:
        n = next(self._ids)
        message: dict[str, Any] = {"id": n, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_chrome, data):]
        while True:
            reply = self._read()
            if reply.get("id") == n:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return dict(reply["result"])

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._pending:
            if not select.select([self._from_chrome], [], [], REPLY_SECONDS)[0]:
                raise BrowserError(f"chromium sent nothing for {REPLY_SECONDS} s")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise BrowserError(f"chromium exited ({self._proc.poll()})")
            self._pending += chunk
        raw, self._pending = self._pending.split(b"\0", 1)
        return dict(json.loads(raw))
