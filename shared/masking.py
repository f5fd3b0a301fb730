"""Secrets out of what rstream prints: the one masking function for URLs and settings.

A URL's credentials are everything between ``://`` and its last ``@`` (so a password holding
``@``, ``:`` or ``/`` is hidden whole, written raw or percent-encoded), and the values of
query parameters that name a credential: ``password`` (``sentinel_password`` too),
``username``, and any parameter whose name holds ``token``, ``secret``, ``key`` or ``auth``.
:func:`mask_text` also hides those values wherever else they appear in a text, such as a
library's error message that quotes the URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote

MASK = "****"
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|auth|credential|^user(name)?$", re.I)
_USER = re.compile(r"user(name)?", re.I)
_PARAM = re.compile(r"([?&;])([^=&;#]*)=([^&;#]*)")


def _params(text: str) -> Iterator[re.Match[str]]:
    """The ``name=value`` query parameters of ``text`` that name a credential."""
    return (m for m in _PARAM.finditer(text) if m.group(3) and _SECRET_PARAM.search(
        unquote(m.group(2))))


def _mask_params(text: str) -> str:
    secret = {m.start(): m for m in _params(text)}
    return _PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}={MASK}" if m.start() in secret
                      else m.group(0), text)


def _split(url: str) -> tuple[str, str, str]:
    """(scheme://, userinfo, the rest) of ``url`` with its secret parameters masked first (a
    raw ``@`` may sit in a parameter's value); userinfo runs to the last ``@`` left."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", "", _mask_params(url)
    rest = _mask_params(rest)
    at = rest.rfind("@")
    if at < 0:
        return scheme + sep, "", rest
    return scheme + sep, rest[:at], rest[at + 1:]


def secrets_in(url: str) -> list[str]:
    """The secret values in ``url`` (passwords, tokens, keys; not user names), as written
    and percent-decoded, longest first, for :func:`mask_text`."""
    found = [m.group(3) for m in _params(url.partition("://")[2] or url)
             if not _USER.fullmatch(unquote(m.group(2)))]
    _, userinfo, _ = _split(url)
    if ":" in userinfo:
        found += [userinfo, userinfo.split(":", 1)[1]]
    found += [unquote(value) for value in found]
    # Very short values would blank out ordinary words; the URL itself is masked whole.
    return sorted({value for value in found if len(value) >= 3}, key=len, reverse=True)


def mask_url(url: str) -> str:
    """``url`` with its credentials replaced by ``****``: for output, logs and errors."""
    scheme, userinfo, rest = _split(url)
    return scheme + (f"{MASK}@" if userinfo else "") + rest


def mask_text(text: str, *urls: str) -> str:
    """``text`` with every URL of ``urls`` masked, and their credentials hidden wherever else
    they appear in it."""
    for url in urls:
        if not url:
            continue
        text = text.replace(url, mask_url(url))
        for secret in secrets_in(url):
            text = text.replace(secret, MASK)
    return text
