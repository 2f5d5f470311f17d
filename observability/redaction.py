"""The guard that keeps secrets out of logs: passwords, tokens, `Authorization`, cookies.

Two layers, applied by the log formatter to every line it writes:

* fields (a log call's `extra=`, nested dicts and lists included) whose name says they hold a
  secret are replaced whole, whatever their value;
* text (messages, exception text, string fields) is scrubbed of what looks like a secret
  wherever it appears: bearer and basic credentials, JWTs, `password=...`-style pairs in
  query strings, reprs and JSON, URL passwords, and the input values pydantic echoes in
  validation errors.

The access log does not go through here (it is on every request's path): it writes only the
method, the path without its query string, the route, the status and timings, and secrets
are never put in paths.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[REDACTED]"

_SENSITIVE_WORDS = (
    r"passw(?:or)?d|passphrase|secret|token|authorization|cookie|api[_-]?key|credentials?"
    r"|private[_-]?key|signature|session[_-]?id"
)
_SENSITIVE_NAME = re.compile(rf"(?i)({_SENSITIVE_WORDS})")

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer <token> / Basic <base64>
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), rf"\1 {REDACTED}"),
    # A JWT anywhere (header.payload.signature, the header always starts `{"` = `eyJ`).
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
    # Header lines and pairs whose whole value is a secret: `Cookie: a=1; b=2`.
    (
        re.compile(
            r"""(?i)\b((?:set-)?cookie|authorization)(["']?\s*[:=]\s*)(?!\[REDACTED)("[^"]*"|'[^']*'|[^\n,}]*)"""
        ),
        rf"\1\2{REDACTED}",
    ),
    # name=value, "name": "value", 'name': 'value' for any secret-sounding name.
    (
        re.compile(
            rf"""(?i)(\w*(?:{_SENSITIVE_WORDS})\w*)(["']?\s*[:=]\s*)(?!\[REDACTED)("[^"]*"|'[^']*'|[^\s"'&,;}}\]]+)"""
        ),
        rf"\1\2{REDACTED}",
    ),
    # scheme://user:password@host
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1***@"),
    # pydantic's "[type=..., input_value='...', input_type=str]"
    (re.compile(r"""input_value=("[^"]*"|'[^']*'|[^,\]]*)"""), f"input_value={REDACTED}"),
)


def is_secret_name(name: str) -> bool:
    return _SENSITIVE_NAME.search(name) is not None


def scrub(text: str) -> str:
    """`text` with everything that looks like a secret replaced."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact(value: Any) -> Any:
    """`value` with secret-named fields replaced and every string scrubbed, recursively."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {
            key: REDACTED if isinstance(key, str) and is_secret_name(key) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(item) for item in value]
    return value
