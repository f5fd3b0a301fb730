"""Reaching Redis: one client factory for every URL form, and a check that fails in seconds.

``RSTREAM_REDIS_URL`` is a plain URL (``redis://``, ``rediss://``, ``unix://``, as redis-py
reads them) or a Sentinel URL::

    redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT],HOST[:PORT].../MASTER_NAME[/DB]
        [?sentinel_password=...&sentinel_username=...]

(``rediss+sentinel://`` for TLS to the Redis servers and the Sentinels alike, with
``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` as redis-py reads them
on ``rediss://``). The password is the Redis servers'; ``sentinel_password`` the Sentinels'.
:func:`parse_sentinel_url` is the one reader of that form; :func:`redis_client` builds every
client rstream makes (job store, locks, heartbeats, probes), and :func:`broker` what Celery
needs for the same Redis. A Sentinel client asks the Sentinels for the primary before each new
connection, and redis-py drops a connection that hits a demoted primary (``READONLY``) as a
connection error, so the callers' retries reach the promoted replica without a restart.

redis-py's own errors for a Redis that is down, unknown, or refuses the password come after
long retries (the job store rides out 30 s outages) and as tracebacks. :func:`check_redis`
pings once with short timeouts first, so a wrong ``RSTREAM_REDIS_URL`` is a one-line error.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from rstream.shared.errors import ConfigError
from rstream.shared.masking import mask_text, mask_url

CHECK_TIMEOUT_S = 3.0
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::(?P<port>\d+))?")
_MASTER = re.compile(r"[A-Za-z0-9._-]+")
_SSL_PARAMS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
              "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True)
class SentinelUrl:
    """A ``redis+sentinel://`` URL, read; :func:`parse_sentinel_url` builds one."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False
    ssl: dict[str, Any] = field(default_factory=dict)  # ssl_* keyword arguments of redis-py

    def server_kwargs(self) -> dict[str, Any]:
        """Connection arguments for the Redis servers (primary and replicas)."""
        kwargs: dict[str, Any] = {"db": self.db}
        if self.password is not None:
            kwargs["password"] = self.password
        if self.username is not None:
            kwargs["username"] = self.username
        if self.tls:
            kwargs.update(ssl=True, **self.ssl)
        return kwargs

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Connection arguments for the Sentinels themselves."""
        kwargs: dict[str, Any] = {}
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        if self.sentinel_username is not None:
            kwargs["username"] = self.sentinel_username
        if self.tls:
            kwargs.update(ssl=True, **self.ssl)
        return kwargs


def is_sentinel(url: str) -> bool:
    """Whether ``url`` is a Sentinel URL (``redis+sentinel://``, ``rediss+sentinel://``)."""
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Read a Sentinel URL; ValueError naming the part that is wrong (never the password)."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError("a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username, password = _userinfo(userinfo) if at else (None, None)
    master, db = _master_and_db(path)
    options = _query(query, tls=scheme.lower() == "rediss+sentinel")
    return SentinelUrl(_sentinels(hosts), master, db, username, password,
                       options.pop("sentinel_username", None),
                       options.pop("sentinel_password", None),
                       tls=scheme.lower() == "rediss+sentinel", ssl=options)


def _userinfo(text: str) -> tuple[str | None, str | None]:
    user, colon, password = text.partition(":")
    if not colon:
        raise ValueError("the part before @ must be :PASSWORD or USER:PASSWORD")
    return unquote(user) or None, unquote(password)


def _sentinels(text: str) -> tuple[tuple[str, int], ...]:
    if not text:
        raise ValueError("no Sentinel address: write HOST[:PORT],HOST[:PORT] after ://")
    found = []
    for item in text.split(","):
        match = _HOST.fullmatch(item)
        if not match:
            raise ValueError(f"Sentinel address {item!r} is not HOST[:PORT]")
        port = int(match["port"] or SENTINEL_PORT)
        if not 0 < port < 65536:
            raise ValueError(f"Sentinel address {item!r}: port {port} is not 1-65535")
        found.append((match["v6"] or match["name"], port))
    return tuple(found)


def _master_and_db(path: str) -> tuple[str, int]:
    master, _, db = path.partition("/")
    if not master:
        raise ValueError("no master name: end the URL with /MASTER_NAME[/DB]")
    if not _MASTER.fullmatch(master):
        raise ValueError(f"master name {master!r} is not letters, digits, . _ -")
    if db == "":
        return master, 0
    if not re.fullmatch(r"\d{1,5}", db):
        raise ValueError(f"database {db!r} after the master name is not a number")
    return master, int(db)


def _query(query: str, *, tls: bool) -> dict[str, Any]:
    allowed = ("sentinel_password", "sentinel_username") + (_SSL_PARAMS if tls else ())
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if name not in allowed:
            hint = " (ssl_* parameters need rediss+sentinel://)" if name in _SSL_PARAMS else ""
            raise ValueError(f"unknown parameter {name!r}{hint}: known are "
                             f"{', '.join(allowed)}")
        if name == "ssl_cert_reqs":
            if value.lower() not in _CERT_REQS:
                raise ValueError("ssl_cert_reqs is not none, optional or required")
            options[name] = _CERT_REQS[value.lower()]
        else:
            options[name] = value
    if tls:
        options.setdefault("ssl_cert_reqs", ssl.CERT_REQUIRED)
    return options


def redis_client(url: str, **kwargs: Any) -> redis.Redis:
    """A client on ``url``, plain or Sentinel; ``kwargs`` are redis-py connection arguments
    (timeouts, ``retry``, ``retry_on_error``), applied to the Sentinels' sockets too."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kwargs)
    parsed = parse_sentinel_url(url)
    timeouts = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    manager = Sentinel(parsed.sentinels, sentinel_kwargs={**timeouts, **parsed.sentinel_kwargs()})
    return manager.master_for(parsed.master, **parsed.server_kwargs(), **kwargs)


@dataclass(frozen=True)
class Broker:
    """What Celery's broker settings need for a Redis URL: the URL kombu reads, its
    transport options, and its TLS options (None: no TLS, or kombu's own reading)."""

    url: str
    transport_options: dict[str, Any]
    use_ssl: dict[str, Any] | None = None


def broker(url: str) -> Broker:
    """The broker settings for ``url``: itself when plain; kombu's ``sentinel://`` form (one
    ``sentinel://`` URL per Sentinel, ``;`` between them) with ``master_name`` when Sentinel."""
    if not is_sentinel(url):
        return Broker(url, {})
    parsed = parse_sentinel_url(url)
    user = (f"{quote(parsed.username or '', safe='')}:{quote(parsed.password, safe='')}@"
            if parsed.password is not None else "")
    urls = [f"sentinel://{user}{_netloc(host, port)}/{parsed.db}"
            for host, port in parsed.sentinels]
    options: dict[str, Any] = {"master_name": parsed.master}
    if parsed.sentinel_kwargs():
        options["sentinel_kwargs"] = parsed.sentinel_kwargs()
    use_ssl = dict(parsed.ssl) if parsed.tls else None
    return Broker(";".join(urls), options, use_ssl)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    client = redis_client(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                          retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise redis_problem(url, exc) from None
    finally:
        client.close()
