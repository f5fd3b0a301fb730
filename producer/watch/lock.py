"""The lock of a watch: one watcher runs it at a time.

``rstream:watch:NAME:lock`` holds the running watcher's token (host, pid); it expires
:data:`LOCK_TTL_S` after its last renewal (every :data:`RENEW_S`, by :class:`Heartbeat`).
Every change a watcher makes while it records objects is one transaction that commits only
while its token is still there (:meth:`WatchLock.commit`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import cast

import redis

from rstream.shared.constants import WATCH_LOCK_KEY
from rstream.shared.errors import ConfigError, WatchLockLost
from rstream.shared.loop import Loop
from rstream.shared.lua import LuaScript

logger = logging.getLogger(__name__)

LOCK_TTL_S = 10
RENEW_S = 2.0

Stage = Callable[[redis.client.Pipeline], object]  # commands queued on a transaction

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class WatchLock:
    """The lock of watch ``name``, as this process would hold it."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.redis, self.name = client, name
        self.key = WATCH_LOCK_KEY.format(name=name)
        self.token = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "at": round(time.time(), 3)})
        self._renew = LuaScript(client, _RENEW)
        self._release = LuaScript(client, _RELEASE)

    def acquire(self, wait_s: float = LOCK_TTL_S + 2.0, poll_s: float = 0.2) -> None:
        """Take the lock. A holder on this host whose process is gone (a watcher killed and
        started again) is replaced at once; another holder has ``wait_s`` to let it expire,
        else ConfigError: another watcher runs this watch."""
        deadline = time.monotonic() + wait_s
        while not self.redis.set(self.key, self.token, nx=True, ex=LOCK_TTL_S):
            holder = self.redis.get(self.key)
            if holder is not None and _dead_here(holder):
                self._release([self.key], [holder])
                continue
            if time.monotonic() > deadline:
                raise ConfigError(f"watch {self.name} is already running ({_who(holder)}): "
                                  "stop that watcher first, or give this one another --name")
            time.sleep(poll_s)

    def renew(self) -> bool:
        """Extend the lock; False when another watcher holds it now."""
        if self._renew([self.key], [self.token, LOCK_TTL_S]):
            return True
        # Expired while Redis was away (or restarted): take it again if nobody else did.
        return bool(self.redis.set(self.key, self.token, nx=True, ex=LOCK_TTL_S))

    def release(self) -> None:
        self._release([self.key], [self.token])

    def commit(self, stage: Stage) -> None:
        """Run ``stage``'s commands in one transaction, while this watcher holds the lock;
        WatchLockLost when another watcher holds it."""
        while True:
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.key)
                    # Watching: the pipeline answers at once, before MULTI.
                    holder = cast(bytes | None, pipe.get(self.key))
                    if holder != self.token.encode():
                        pipe.unwatch()
                        if holder is None and self.renew():
                            continue
                        raise WatchLockLost(f"watch {self.name}: another watcher holds the "
                                            f"lock now ({_who(holder)}): this one stops")
                    pipe.multi()
                    stage(pipe)
                    pipe.execute()
                    return
                except redis.WatchError:  # the lock was renewed meanwhile: try again
                    continue

    def holder(self) -> str | None:
        """Who holds the lock now ("pid N on HOST"), or None."""
        raw = self.redis.get(self.key)
        return None if raw is None else _who(raw)


class LockRenewer(Loop):
    """Renews a watcher's lock every RENEW_S seconds; ``lost`` is set when another watcher
    holds it (the next commit stops this one)."""

    def __init__(self, lock: WatchLock) -> None:
        super().__init__("rstream-watch-lock", RENEW_S)
        self.lock = lock
        self.lost = threading.Event()

    def tick(self) -> None:
        try:
            if not self.lock.renew():
                self.lost.set()
        except redis.RedisError as exc:  # Redis away: the commits will say if it matters
            logger.debug("watch %s: lock not renewed: %s", self.lock.name, exc)


def _dead_here(holder: bytes) -> bool:
    """Whether the lock's holder ran on this host in a process that no longer exists."""
    try:
        token = json.loads(holder)
        host, pid = token["host"], int(token["pid"])
    except (ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _who(holder: bytes | None) -> str:
    try:
        token = json.loads(holder or b"")
        return f"pid {token['pid']} on {token['host']}"
    except (ValueError, KeyError, TypeError):
        return "unknown holder"
