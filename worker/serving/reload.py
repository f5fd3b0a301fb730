"""Hot reload: which version of each registry model a serving process uses right now.

A reference by name (``digits``) follows the production pointer, read at most every
``reload_interval`` seconds: when a chunk asks, and by a loop in the background while it is
idle, so the first job after a promotion already gets the new version. A newly promoted
version loads on a background thread while the old one keeps serving; it is swapped in only
once it has loaded. A version that fails to load for good
(corrupt file, wrong architecture or class count, NaN weights) is logged once, remembered, and
never served; the old version goes on. A transient failure (storage throttled or down) is
tried again at the next check. A production pointer that cannot be read (storage down, a
corrupt production.json) keeps the current version serving, logged once per new problem, not
at every check. Because the engine resolves a version once per chunk, one chunk never mixes
versions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from rstream.shared.errors import PermanentError
from rstream.shared.loop import Loop
from rstream.shared.models.registry import Registry

logger = logging.getLogger(__name__)


class ProductionTracker:
    """The version to serve for each model name, following production off the serving path."""

    def __init__(self, registry: Registry, interval_s: float,
                 load: Callable[[str], object]) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self._load = load  # loads and caches "NAME@VERSION"; raises when it cannot
        self._lock = threading.Lock()
        self._serving: dict[str, str] = {}
        self._checked: dict[str, float] = {}
        self._loading: set[str] = set()
        self._bad: set[str] = set()
        self._problems: dict[str, str] = {}  # name -> the pointer problem last logged
        self._checks = PointerChecks(self)

    def version(self, name: str) -> str:
        """The version of ``name`` to serve now; the first call reads production inline."""
        now = time.monotonic()
        with self._lock:
            current = self._serving.get(name)
            if current is not None and now - self._checked.get(name, 0.0) < self.interval_s:
                return current
            self._checked[name] = now
        try:
            latest = self.registry.production(name)
        except Exception as exc:  # storage down, a corrupt pointer, anything: keep serving
            if current is None:
                raise
            self._problem(name, f"cannot read the production pointer of {name} ({exc}); "
                                f"still serving {name}@{current}")
            return current
        self._problem(name, None)
        if current is None:
            with self._lock:
                current = self._serving.setdefault(name, latest)
            self._watch()
            return current
        if latest != current:
            self._start_load(name, latest, current)
        return current

    def close(self) -> None:
        """Stop checking the pointers in the background."""
        self._checks.stop()

    def _problem(self, name: str, problem: str | None) -> None:
        """Log a pointer problem once when it appears or changes, and once when it clears."""
        with self._lock:
            previous = self._problems.pop(name, None)
            if problem is not None:
                self._problems[name] = problem
        if problem is not None and problem != previous:
            logger.warning("%s", problem)
        elif problem is None and previous is not None:
            logger.info("the production pointer of %s reads again", name)

    def _watch(self) -> None:
        """Check the pointers in the background from now on (once a name is served)."""
        with self._lock:
            if self._checks.running or self._checks.stopped or self.interval_s <= 0:
                return
            self._checks.start()

    def check_all(self) -> None:
        """Read the production pointer of every name served now (see :meth:`version`)."""
        with self._lock:
            names = list(self._serving)
        for name in names:
            try:
                self.version(name)
            except Exception:  # the next chunk will see and report the same problem
                logger.exception("checking the production pointer of %s failed", name)

    def _start_load(self, name: str, version: str, serving: str) -> None:
        key = f"{name}@{version}"
        with self._lock:
            if key in self._bad or key in self._loading:
                return
            self._loading.add(key)
        logger.info("production of %s is now %s; loading it while %s@%s serves",
                    name, version, name, serving)
        threading.Thread(target=self._load_then_swap, args=(name, version, serving),
                         name=f"rstream-reload-{name}", daemon=True).start()

    def _load_then_swap(self, name: str, version: str, serving: str) -> None:
        key = f"{name}@{version}"
        try:
            self._load(key)
        except PermanentError as exc:
            logger.error("cannot load %s, still serving %s@%s: %s", key, name, serving, exc)
            with self._lock:
                self._bad.add(key)
        except Exception as exc:  # transient (storage throttled or down): try again later
            logger.warning("loading %s failed for now (%s: %s), still serving %s@%s; trying "
                           "again at the next check", key, type(exc).__name__, exc, name,
                           serving)
        else:
            with self._lock:
                self._serving[name] = version
            logger.info("now serving %s (was %s@%s)", key, name, serving)
        finally:
            with self._lock:
                self._loading.discard(key)


class PointerChecks(Loop):
    """Reads every served name's production pointer each ``interval_s``, off the serving
    path, so a new version loads before a chunk asks for it."""

    def __init__(self, versions: ProductionTracker) -> None:
        super().__init__("rstream-reload", max(versions.interval_s, 0.001))
        self.versions = versions

    def tick(self) -> None:
        self.versions.check_all()
