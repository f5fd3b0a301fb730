"""The names a user gives things: job ids, model names and watch (or stream) names.

One rule for all three, matched whole (``fullmatch``): letters, digits, ``.``, ``_`` and
``-``, starting with a letter or digit, up to a length of their own. A name is a Redis key
part and a storage path segment, so nothing else may pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rstream.shared.errors import ConfigError


@dataclass(frozen=True)
class NameRule:
    """What a name of one kind may be; :meth:`check` refuses anything else with the rule."""

    what: str  # how a message calls it: "job id"
    longest: int
    regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        pattern = rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{self.longest - 1}}}"
        object.__setattr__(self, "regex", re.compile(pattern))

    @property
    def pattern(self) -> str:
        return self.regex.pattern

    def matches(self, text: str) -> bool:
        return self.regex.fullmatch(text) is not None

    def check(self, text: str) -> str:
        """``text`` when it is a valid name of this kind, else ConfigError naming the rule."""
        if not self.matches(text):
            raise ConfigError(f"{self.what} {text!r} is invalid: use letters, digits, '.', "
                              f"'_' or '-' (at most {self.longest}, starting with a letter or "
                              "digit)")
        return text


JOB_ID = NameRule("job id", 128)
MODEL_NAME = NameRule("model name", 64)
WATCH_NAME = NameRule("watch name", 64)
