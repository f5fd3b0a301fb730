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
