"""The redaction rules, as data and pure functions: which keys name secrets, which patterns find them.

:class:`agentemit.pipeline.redact.Redactor` applies them; its docstring describes the rules. Kept apart
so the stage reads as the order it applies them in, and the rules as one table to review.
"""

from __future__ import annotations

import json
import re
from typing import Final

from agentemit import semconv

# Keys whose values are JSON by contract: when cut they become a JSON string, never broken JSON.
JSON_KEYS: Final = frozenset(
    {semconv.OBJECT_JSON, semconv.EVENT_PAYLOAD, semconv.AGENTOPS_TASK_OUTPUT, semconv.AGENTOPS_ENTITY_OUTPUT}
)
IDENTITY_KEYS: Final = frozenset({semconv.ROLLOUT_ID, semconv.ATTEMPT_ID, semconv.SPAN_SEQUENCE_ID})
EXEMPT_PREFIXES: Final = (semconv.REWARD_PREFIX + ".",)

# --- key-name rule ----------------------------------------------------------------------------

# fmt: off
_SECRET_KEY_NAMES: Final = frozenset({
    "password", "passwd", "pwd", "passphrase", "secret", "api_key", "apikey", "authorization",
    "auth", "cookie", "set_cookie", "private_key", "privatekey", "access_key", "accesskey",
    "secret_key", "client_secret", "session_id", "sessionid", "credential", "credentials",
})
_SECRET_KEY_SUFFIXES: Final = tuple("_" + name for name in (
    "password", "passwd", "passphrase", "secret", "api_key", "apikey", "authorization", "auth",
    "cookie", "private_key", "access_key", "secret_key", "session_id", "credentials",
))
# fmt: on
_SECRET_KEY_WORDS: Final = frozenset({"password", "passwd", "passphrase", "secret"})  # any ``_`` part

# Tiers: what a matching key's value loses.
KEEP, MASK_TEXT, MASK_NON_BOOL, MASK_ALL = 0, 1, 2, 3

_CAMEL_1 = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_CAMEL_2 = re.compile(r"(?<=[A-Z])(?=[A-Z][a-z])")


def normalize_key(segment: str) -> str:
    """``X-Api-Key``, ``xApiKey``, ``X_API_KEY`` all become ``x_api_key``."""
    segment = _CAMEL_2.sub("_", _CAMEL_1.sub("_", segment))
    return segment.lower().replace("-", "_")


def builtin_key_tier(name: str) -> int:
    if name in ("token",) or name.endswith("_token"):
        return MASK_TEXT
    if name in _SECRET_KEY_NAMES or name.endswith(_SECRET_KEY_SUFFIXES):
        return MASK_NON_BOOL
    if _SECRET_KEY_WORDS.intersection(name.split("_")):
        return MASK_NON_BOOL
    return KEEP


# --- pattern rules ----------------------------------------------------------------------------
# Each rule is one regex; a ``(?P<secret>...)`` group, when present, is the only part masked.
# Values start with ``(?!\[REDACTED)`` (or exclude ``[``) so a masked value is never masked again.

# A value starting with [ or { is a marker or a structure, not a secret.
_PAIR_VALUE = r"(?![\[{])(?P<secret>[^\s\"'&;,<>\\)\]}]+)"
# A private key block spans lines, so it gets its own pass before the others: in one combined pass a
# ``name=value`` match glued to ``-----BEGIN`` would swallow the header and leave the key body behind.
PRIVATE_KEY = re.compile(
    r"-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[\s\S]*?-----END[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----|[\s\S]*)"  # unterminated: to the end
)
BUILTIN_RULES: Final[tuple[tuple[str, str], ...]] = (
    ("url_password", r"://[^\s:/?#@\"'\\]*:(?!\[REDACTED)(?P<secret>[^\s/?#@\"'\\]+)@"),
    (
        "authorization_header",
        # The scheme word (Bearer, Basic, token ...) is kept. Without one, the value must not be a word
        # followed by more text: that word is a scheme whose token is already masked.
        r"(?i:authorization)[\"']?\s*[:=]\s*[\"']?(?:[A-Za-z][A-Za-z0-9_-]*\s+|(?![A-Za-z][A-Za-z0-9_-]*\s+\S))"
        r"(?!\[REDACTED)(?P<secret>[^\s\"',;]+)",
    ),
    ("cookie_header", r"(?i:(?:set-)?cookie)[\"']?\s*[:=]\s*[\"']?(?!\[REDACTED)(?P<secret>[^\s\"'\\][^\r\n\"'\\]*)"),
    ("bearer", r"(?i:bearer)\s+(?P<secret>[A-Za-z0-9\-._~+/]{12,}=*)"),
    (
        "secret_pair",
        r"(?i:passw(?:or)?d|passphrase|secret(?:[_-]?key)?|token|api[_-]?key|access[_-]?key|private[_-]?key|signature"
        r"|session[_-]?id|credentials?|(?<![A-Za-z0-9])(?:pwd|sig))[\"']?\s*[:=]\s*[\"']?" + _PAIR_VALUE,
    ),
    ("openai_key", r"(?<![A-Za-z0-9_-])sk-(?=[A-Za-z0-9_-]*[A-Z0-9])[A-Za-z0-9_-]{20,}"),
    ("aws_access_key_id", r"(?<![0-9A-Z])(?:AKIA|ASIA)[0-9A-Z]{16}"),
    ("github_token", r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"),
    ("jwt", r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    ("slack_token", r"(?<![A-Za-z0-9])xox[baprs]-[A-Za-z0-9-]{10,}"),
    ("google_api_key", r"AIza[0-9A-Za-z_-]{35}"),
)
BUILTIN_MIN_LEN: Final = 5  # no built-in rule matches fewer characters ("pwd=x")
# Substring triggers (see may_match): every built-in match contains one of them, and ``in`` is many
# times faster than running the combined regex (Python's ``re`` tries each alternative at each
# position), so the regex runs only on the rare value that holds a trigger. These are the lowercase
# words of the header / ``name=value`` rules; those rules also need a ``:`` or ``=``.
# Python's case-insensitive matching also takes ``ſ`` for s and ``ı``/``İ`` for i (``K``, the Kelvin
# sign, lowercases to k by itself); str.lower() keeps ``ſ`` and ``ı`` and turns ``İ`` into i plus a
# combining dot. Folding these keeps the word triggers a superset of what the (?i) rules match.
_FOLD_TO_ASCII: Final = str.maketrans({"ſ": "s", "ı": "i", "\u0307": None})
PAIR_TRIGGERS: Final = ("auth", "cookie", "pass", "pwd", "secret", "token", "key", "sig", "session", "credential")
JSON_START = re.compile(r"\s*[\[{\"]")
MARKER = re.compile(r"\[REDACTED(?::(?:[0-9a-f]{12}|error))?\]")


def may_match(text: str) -> bool:
    """False when no built-in pattern can match ``text`` (checked with substring tests only).

    The literal triggers are ``sk-``, ``-----BEGIN``, ``AKIA``, ``ASIA``, ``AIza``, ``eyJ``, ``xox``,
    ``://`` with ``@``, and ``gh`` with ``_``. Each is looked for only when a character it holds is
    present: a one-character search is a ``memchr``, several times faster than a longer needle's.
    """
    if "-" in text and ("sk-" in text or "-----BEGIN" in text):
        return True
    if "A" in text and ("AKIA" in text or "ASIA" in text or "AIza" in text):
        return True
    if ("J" in text and "eyJ" in text) or ("x" in text and "xox" in text):
        return True
    if ("@" in text and "://" in text) or ("_" in text and "gh" in text):  # URL password; gh?_ / github_pat_
        return True
    lower = text.lower()
    if not lower.isascii():
        lower = lower.translate(_FOLD_TO_ASCII)
    if "bearer" in lower:
        return True
    if ":" in text or "=" in text:
        for trigger in PAIR_TRIGGERS:
            if trigger in lower:
                return True
    return False


def masks(tier: int, value: object) -> bool:
    """Does a key of this tier mask this value? A tuple goes by its items' type."""
    if tier == MASK_ALL:
        return True
    if isinstance(value, (tuple, list)):
        if not value:
            return False
        value = value[0]
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return tier == MASK_NON_BOOL
    return True


def canonical(value: object) -> str:
    """The text hashed in ``"hash"`` mode: equal values give equal tags."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=repr)


def compile_user_pattern(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        return pattern
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"Redactor: pattern {pattern!r} is not a valid regex: {exc}") from exc
