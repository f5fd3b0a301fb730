"""Lua scripts that survive a Redis restart.

redis-py's ``register_script`` runs EVALSHA and, on NOSCRIPT, loads the script and runs
EVALSHA again. Against a Redis that has just restarted (its script cache is empty, and it
answers while it loads its append-only file) that second EVALSHA was seen to fail with
NOSCRIPT too, and the chunk whose completion it was recording stalled. Here the fallback is
EVAL, which carries the script's text and so cannot miss the cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis


class LuaScript:
    """``script(keys, args)``: EVALSHA, or EVAL when the server does not hold the script."""

    def __init__(self, client: redis.Redis, text: str) -> None:
        self.client, self.text = client, text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        try:
            return self.client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return self.client.eval(self.text, len(keys), *keys, *args)

    def many(self, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """The script once per (keys, args) of ``calls``, pipelined in one round trip; the
        calls answered NOSCRIPT run again with EVAL (a second round trip), so each call runs
        once. The first other error is raised, after every call has run."""
        with self.client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self.sha, len(keys), *keys, *args)
            results = pipe.execute(raise_on_error=False)
        missing = [i for i, result in enumerate(results)
                   if isinstance(result, redis.exceptions.NoScriptError)]
        if missing:
            with self.client.pipeline(transaction=False) as pipe:
                for i in missing:
                    keys, args = calls[i]
                    pipe.eval(self.text, len(keys), *keys, *args)
                for i, result in zip(missing, pipe.execute(raise_on_error=False), strict=True):
                    results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return list(results)
