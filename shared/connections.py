"""Reaching Redis from a command: fail in seconds with one line that names the fix.

redis-py's own errors for a Redis that is down, unknown, or refuses the password come after
long retries (the job store rides out 30 s outages) and as tracebacks. :func:`check_redis`
pings once with short timeouts first, so a wrong ``RSTREAM_REDIS_URL`` is a one-line error.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rstream.shared.errors import ConfigError
from rstream.shared.masking import mask_text, mask_url

CHECK_TIMEOUT_S = 3.0


def _refused_password(exc: Exception) -> bool:
    text = str(exc)
    return isinstance(exc, redis.AuthenticationError) or any(
        word in text for word in ("WRONGPASS", "NOAUTH", "invalid password"))


def redis_problem(url: str, exc: Exception) -> ConfigError:
    """The one-line error for ``exc`` on ``url``, its credentials masked (in the URL and in
    redis-py's own message)."""
    shown, detail = mask_url(url), mask_text(str(exc), url)
    if _refused_password(exc):
        return ConfigError(f"Redis at {shown} refused the password ({detail}): set the right one "
                           "in RSTREAM_REDIS_URL (redis://:PASSWORD@HOST:PORT/DB)")
    return ConfigError(
        f"RSTREAM_REDIS_URL={shown} is not reachable ({detail}): start Redis (`bash "
        "scripts/redis.sh ensure` starts a local redis-server) or set RSTREAM_REDIS_URL to one "
        "that runs")


def redis_state(exc: Exception) -> str:
    """What an unauthenticated probe may say of a Redis that fails: no URL, no host."""
    if _refused_password(exc):
        return "Redis refused the password (see this process's log)"
    return f"Redis does not answer ({type(exc).__name__}; see this process's log)"


def check_redis(url: str, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Ping Redis at ``url`` once; ConfigError naming the fix when it does not answer."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                  socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise redis_problem(url, exc) from None
    finally:
        client.close()
