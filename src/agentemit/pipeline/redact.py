"""Redaction stage: secrets never leave the process, and no attribute value is unbounded.

:class:`Redactor` is a pipeline stage (``Callable[[Span], Span | None]``) run by the worker on every
finished span, ours and third-party instrumentation's alike. It rewrites *values* only: attribute
values (strings, tuples of strings), span event attributes, resource attributes and the status
description. Span names and attribute keys are never changed (names are low-cardinality identifiers
that readers and stores key on).

Three rules, in this order, per value:

1. **Key names.** A value whose key's last dotted segment names a secret (``password``,
   ``api_key``, ``authorization``, ``http.request.header.set-cookie``, ``clientSecret`` ...) is
   replaced whole. Bools are kept (one bit holds no secret) and numbers under ``*token`` keys are
   kept (they are counts such as ``time_to_first_token``; real tokens are strings). Our identity keys
   and ``agentlightning.reward.*`` are exempt; ``*_tokens`` and ``token_count`` do not match.
2. **Patterns** inside strings: API keys, tokens, JWTs, PEM private keys, ``Authorization``/``Cookie``
   headers, ``password=``-style pairs and URL passwords. Only the secret part is masked
   (``Bearer [REDACTED]``, ``postgres://user:[REDACTED]@host``). A string that parses as JSON is
   redacted structurally (patterns on every string, the key rule on every object key) and re-dumped,
   so valid JSON stays valid; it is re-dumped only when something changed.
3. **Size.** A string longer than ``max_value_len`` is cut to exactly ``max_value_len`` characters
   ending in :data:`agentemit.semconv.TRUNCATED_SUFFIX`. A value under a JSON-carrying key
   (``agentlightning.object.json``, ``agentlightning.event.payload``, AgentOps outputs) is instead
   replaced by a JSON *string* holding the cut text, so readers that parse it still can; an object
   span also gets ``agentlightning.object.truncated = True``. A tuple longer than ``max_tuple_len``
   keeps its first ``max_tuple_len`` items and gains the marker attribute ``<key>.truncated = True``.
   Secrets are masked before cutting, so a cut never leaves half a secret behind.

Redaction is idempotent: redacting a redacted span changes nothing. A rule that raises (a user
callback, or a bug) never loses the span: the one value becomes ``[REDACTED:error]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, TypeAlias

import orjson

from agentemit import semconv
from agentemit.span import Attributes, AttributeValue, Span, SpanEvent

RedactMode: TypeAlias = Literal["mask", "hash"]
RedactCallback: TypeAlias = Callable[[str, AttributeValue], AttributeValue | None]

MASK: Final = "[REDACTED]"
ERROR_MASK: Final = "[REDACTED:error]"
STATUS_DESCRIPTION_KEY: Final = "status_description"  # the key a callback sees for the status description
TRUNCATED_MARKER_SUFFIX: Final = ".truncated"  # ``<key>.truncated = True`` marks a trimmed tuple

# Keys whose values are JSON by contract: when cut they become a JSON string, never broken JSON.
JSON_KEYS: Final = frozenset(
    {semconv.OBJECT_JSON, semconv.EVENT_PAYLOAD, semconv.AGENTOPS_TASK_OUTPUT, semconv.AGENTOPS_ENTITY_OUTPUT}
)
_IDENTITY_KEYS: Final = frozenset({semconv.ROLLOUT_ID, semconv.ATTEMPT_ID, semconv.SPAN_SEQUENCE_ID})
_EXEMPT_PREFIXES: Final = (semconv.REWARD_PREFIX + ".",)

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
_KEEP, _MASK_TEXT, _MASK_NON_BOOL, _MASK_ALL = 0, 1, 2, 3

_CAMEL_1 = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_CAMEL_2 = re.compile(r"(?<=[A-Z])(?=[A-Z][a-z])")


def normalize_key(segment: str) -> str:
    """``X-Api-Key``, ``xApiKey``, ``X_API_KEY`` all become ``x_api_key``."""
    segment = _CAMEL_2.sub("_", _CAMEL_1.sub("_", segment))
    return segment.lower().replace("-", "_")


def _builtin_key_tier(name: str) -> int:
    if name in ("token",) or name.endswith("_token"):
        return _MASK_TEXT
    if name in _SECRET_KEY_NAMES or name.endswith(_SECRET_KEY_SUFFIXES):
        return _MASK_NON_BOOL
    if _SECRET_KEY_WORDS.intersection(name.split("_")):
        return _MASK_NON_BOOL
    return _KEEP


# --- pattern rules ----------------------------------------------------------------------------
# Each rule is one regex; a ``(?P<secret>...)`` group, when present, is the only part masked.
# Values start with ``(?!\[REDACTED)`` (or exclude ``[``) so a masked value is never masked again.

# A value starting with [ or { is a marker or a structure, not a secret.
_PAIR_VALUE = r"(?![\[{])(?P<secret>[^\s\"'&;,<>\\)\]}]+)"
# A private key block spans lines, so it gets its own pass before the others: in one combined pass a
# ``name=value`` match glued to ``-----BEGIN`` would swallow the header and leave the key body behind.
_PRIVATE_KEY = re.compile(
    r"-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[\s\S]*?-----END[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----|[\s\S]*)"  # unterminated: to the end
)
_BUILTIN_RULES: Final[tuple[tuple[str, str], ...]] = (
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
_BUILTIN_MIN_LEN: Final = 5  # no built-in rule matches fewer characters ("pwd=x")
# Substring triggers: every built-in match contains one of them, and ``in`` is many times faster than
# running the combined regex (Python's ``re`` tries each alternative at each position), so the regex
# runs only on the rare value that holds a trigger.
_LITERAL_TRIGGERS: Final = ("sk-", "AKIA", "ASIA", "eyJ", "xox", "AIza", "-----BEGIN")
# Lowercase words of the header / ``name=value`` rules; those rules also need a ``:`` or ``=``.
_PAIR_TRIGGERS: Final = ("auth", "cookie", "pass", "pwd", "secret", "token", "key", "sig", "session", "credential")
_JSON_START = re.compile(r"\s*[\[{\"]")
_MARKER = re.compile(r"\[REDACTED(?::(?:[0-9a-f]{12}|error))?\]")
_WINDOW_MARGIN: Final = 4096  # scan this far past the size limit so a secret across the cut is still found
_MAX_PASSES: Final = 4  # redact-and-cut until nothing changes (each pass after the first is rare)
_KEY_CACHE_LIMIT: Final = 8192


@dataclasses.dataclass(frozen=True, slots=True)
class RedactionStats:
    """Counters since the redactor was built.

    ``values_redacted``: values a rule changed (an error replacement counts); ``spans_redacted``: spans
    with at least one such value; ``truncated``: values cut to a size limit; ``rule_errors``: values
    replaced by ``[REDACTED:error]`` because a rule raised.
    """

    values_redacted: int = 0
    spans_redacted: int = 0
    truncated: int = 0
    rule_errors: int = 0


class _Tally:
    """Per-span counts, folded into the redactor's totals once per span."""

    __slots__ = ("cut_items", "cut_text", "errors", "redacted", "truncated")

    def __init__(self) -> None:
        self.redacted = self.truncated = self.errors = 0
        self.cut_items = self.cut_text = False  # what the value just processed lost to a size limit


class _JsonNotParsed(Exception):
    """The text is not JSON we can re-dump losslessly; scan it as plain text."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _JsonNotParsed(text)
    return value


def _reject_constant(text: str) -> Any:
    raise _JsonNotParsed(text)


def _is_attribute_value(value: object) -> bool:
    scalars = (str, bool, int, float)
    return isinstance(value, scalars) or (isinstance(value, tuple) and all(isinstance(v, scalars) for v in value))


class Redactor:
    """Pipeline stage that masks secrets in span values and bounds value sizes.

    Args:
        patterns: extra regexes (str or compiled); a ``secret`` named group limits the mask to it.
        keys: extra secret key names, matched against the normalized last key segment or whole key
            (any value type is masked, bools included).
        callback: ``callback(key, value) -> value`` runs last on every value; return it unchanged to
            keep it, another attribute value to replace it, or None to drop the attribute. For the
            status description the key is :data:`STATUS_DESCRIPTION_KEY`.
        mode: ``"mask"`` writes ``[REDACTED]``; ``"hash"`` writes ``[REDACTED:<12 hex of sha256>]`` so
            equal secrets can be correlated without being revealed.
        max_value_len: longest string kept, in characters (cut ones end in ``TRUNCATED_SUFFIX``).
        max_tuple_len: most items kept in a tuple value.
        enabled: False makes the stage return every span untouched.

    Raises:
        ValueError: an unknown mode, a limit too small to hold the truncation marker, or a pattern
            that is not a valid regex.
    """

    def __init__(
        self,
        *,
        patterns: Iterable[str | re.Pattern[str]] = (),
        keys: Iterable[str] = (),
        callback: RedactCallback | None = None,
        mode: RedactMode = "mask",
        max_value_len: int = 16384,
        max_tuple_len: int = 1024,
        enabled: bool = True,
    ) -> None:
        if mode not in ("mask", "hash"):
            raise ValueError(f"Redactor: mode {mode!r} is not one of 'mask', 'hash'")
        if max_value_len < len(semconv.TRUNCATED_SUFFIX) + 2:
            raise ValueError(f"Redactor: max_value_len {max_value_len} cannot hold the truncation marker")
        if max_tuple_len < 1:
            raise ValueError(f"Redactor: max_tuple_len {max_tuple_len} must be at least 1")
        self.enabled = enabled
        self._mode = mode
        self._max_len = max_value_len
        self._max_items = max_tuple_len
        self._callback = callback
        compiled = [_compile_user_pattern(p) for p in patterns]
        self._user_patterns = [(p, self._user_replacer(p)) for p in compiled]
        self._user_keys = frozenset(normalize_key(k) for k in keys)
        self._combined = re.compile(
            "|".join(
                f"(?P<r{i}>{body.replace('(?P<secret>', f'(?P<s{i}>')})" for i, (_, body) in enumerate(_BUILTIN_RULES)
            )
        )
        self._secret_group = [f"s{i}" if "(?P<secret>" in body else None for i, (_, body) in enumerate(_BUILTIN_RULES)]
        # A JSON object key the key rule could match holds one of these (lowercased) substrings.
        self._json_key_triggers = _PAIR_TRIGGERS + tuple(max(re.split(r"[._]", k), key=len) for k in self._user_keys)
        self._key_tiers: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stats = RedactionStats()

    # --- public -------------------------------------------------------------------------------

    def __call__(self, span: Span) -> Span:
        """Return ``span`` itself when nothing needed redacting, else a redacted copy."""
        if not self.enabled:
            return span
        tally = _Tally()
        changes: dict[str, Any] = {}
        attributes = self._attributes(span.attributes, tally)
        if attributes is not None:
            changes["attributes"] = attributes
        events = self._events(span.events, tally)
        if events is not None:
            changes["events"] = events
        if span.resource:
            resource = self._attributes(span.resource, tally)
            if resource is not None:
                changes["resource"] = resource
        if span.status_description is not None:
            description = self._value(STATUS_DESCRIPTION_KEY, span.status_description, tally)
            if description is not span.status_description:
                changes["status_description"] = None if description is None else str(description)
        if tally.redacted or tally.truncated:
            with self._lock:
                s = self._stats
                self._stats = RedactionStats(
                    values_redacted=s.values_redacted + tally.redacted,
                    spans_redacted=s.spans_redacted + (1 if tally.redacted else 0),
                    truncated=s.truncated + tally.truncated,
                    rule_errors=s.rule_errors + tally.errors,
                )
        return dataclasses.replace(span, **changes) if changes else span

    def stats(self) -> RedactionStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats

    def redact_text(self, text: str) -> str:
        """Apply the pattern and size rules to one string (as if it were an attribute value)."""
        return self._text(text, "", _Tally())

    # --- attributes ---------------------------------------------------------------------------

    def _attributes(self, attrs: Mapping[str, AttributeValue], tally: _Tally) -> Attributes | None:
        """A redacted copy of ``attrs``, or None when nothing changed."""
        out: Attributes | None = None
        for key, value in attrs.items():
            tally.cut_items = tally.cut_text = False
            new = self._value(key, value, tally)
            if new is value:
                continue
            if out is None:
                out = dict(attrs)
            if new is None:
                del out[key]
                continue
            out[key] = new
            if tally.cut_items:
                out[key + TRUNCATED_MARKER_SUFFIX] = True
            if tally.cut_text and key == semconv.OBJECT_JSON:
                out[semconv.OBJECT_TRUNCATED] = True
        return out

    def _events(self, events: list[SpanEvent], tally: _Tally) -> list[SpanEvent] | None:
        out: list[SpanEvent] | None = None
        for i, event in enumerate(events):
            attrs = self._attributes(event.attributes, tally) if event.attributes else None
            if attrs is None:
                continue
            if out is None:
                out = list(events)
            out[i] = SpanEvent(event.name, event.timestamp, attrs)
        return out

    def _value(self, key: str, value: AttributeValue, tally: _Tally) -> AttributeValue | None:
        """``value`` itself when unchanged; a replacement; or None to drop it (callback's choice)."""
        if key in _IDENTITY_KEYS:
            return value
        before = tally.redacted
        try:
            new: AttributeValue | None = self._rules(key, value, tally)
            if self._callback is not None and new is not None:
                replaced = self._callback(key, new)
                if replaced is not None and not _is_attribute_value(replaced):
                    raise TypeError(f"callback returned {type(replaced).__name__} for {key!r}")
                if replaced is not new and replaced != new:
                    tally.redacted = before + 1
                new = replaced
            return new
        except Exception:  # a rule must never lose the span: lose only this value
            tally.redacted = before + 1
            tally.errors += 1
            return ERROR_MASK

    def _rules(self, key: str, value: AttributeValue, tally: _Tally) -> AttributeValue:
        tier = self._key_tier(key)
        if tier and _masks(tier, value):
            if isinstance(value, str) and _MARKER.fullmatch(value):
                return value
            tally.redacted += 1
            return self._mask(_canonical(value))
        if isinstance(value, str):
            return self._text(value, key, tally)
        if isinstance(value, tuple):
            return self._tuple(key, value, tally)
        return value

    def _tuple(self, key: str, value: tuple[Any, ...], tally: _Tally) -> AttributeValue:
        items = value
        redacted, truncated = tally.redacted, tally.truncated
        if len(items) > self._max_items:
            items = items[: self._max_items]
            tally.truncated += 1
            tally.cut_items = True
        if items and isinstance(items[0], str):
            texts = tuple(self._text(v, key, tally) if isinstance(v, str) else v for v in items)
            if any(a is not b for a, b in zip(texts, items, strict=True)):
                items = texts
        # One value, however many of its items changed.
        tally.redacted = min(tally.redacted, redacted + 1)
        tally.truncated = min(tally.truncated, truncated + 1)
        return items

    def _key_tier(self, key: str) -> int:
        tier = self._key_tiers.get(key)
        if tier is None:
            last = normalize_key(key.rpartition(".")[2])
            if self._user_keys and (last in self._user_keys or normalize_key(key) in self._user_keys):
                tier = _MASK_ALL
            elif key.startswith(_EXEMPT_PREFIXES):
                tier = _KEEP
            else:
                tier = _builtin_key_tier(last)
            if len(self._key_tiers) >= _KEY_CACHE_LIMIT:
                self._key_tiers.clear()
            self._key_tiers[key] = tier
        return tier

    # --- strings ------------------------------------------------------------------------------

    def _text(self, text: str, key: str, tally: _Tally) -> str:
        """Mask secrets in ``text`` and bound its size; ``text`` itself when unchanged."""
        current = text
        windowed = len(text) > self._max_len + _WINDOW_MARGIN
        if windowed:
            current = text[: self._max_len + _WINDOW_MARGIN]
        redacted = cut = False
        for _ in range(_MAX_PASSES):
            scanned = self._scan(current, 0)
            if scanned is not current:
                redacted = True
            if windowed or len(scanned) > self._max_len:
                scanned = self._cut(scanned, key)
                windowed = False
                cut = True
            if scanned is current or scanned == current:
                break
            current = scanned
        if redacted:
            tally.redacted += 1
        if cut:
            tally.truncated += 1
            tally.cut_text = True
        return text if current == text else current

    def _cut(self, text: str, key: str) -> str:
        suffix = semconv.TRUNCATED_SUFFIX
        if key not in JSON_KEYS:
            return text[: self._max_len - len(suffix)] + suffix
        keep = self._max_len - len(suffix) - 2  # the two quotes of a JSON string
        while True:  # escapes can lengthen the text; each round drops at least the overflow
            literal = json.dumps(text[:keep] + suffix, ensure_ascii=False)
            if len(literal) <= self._max_len or keep == 0:
                return literal
            keep = max(0, keep - (len(literal) - self._max_len))

    def _scan(self, text: str, depth: int) -> str:
        """Apply the pattern rules (structurally for JSON); ``text`` itself when nothing matched."""
        if depth < 2 and _JSON_START.match(text):
            if not (
                _may_match(text)
                or any(word in text.lower() for word in self._json_key_triggers)
                or any(pattern.search(text) for pattern, _ in self._user_patterns)
            ):
                return text  # no rule can match anywhere in it
            try:
                return self._scan_json(text, depth)
            except _JsonNotParsed:
                pass
        out = text
        if len(text) >= _BUILTIN_MIN_LEN and _may_match(text):
            new = text
            if "-----BEGIN" in new:
                new = _PRIVATE_KEY.sub(lambda match: self._mask(match.group()), new)
            new = self._combined.sub(self._replace_builtin, new)
            if new != text:
                out = new
        for pattern, replace in self._user_patterns:
            new = pattern.sub(replace, out)
            if new != out:
                out = new
        return out

    def _replace_builtin(self, match: re.Match[str]) -> str:
        index = int((match.lastgroup or "r0")[1:])
        group = self._secret_group[index]
        if group is None:
            return self._mask(match.group())
        start, end = match.span(group)
        whole = match.group()
        offset = match.start()
        return whole[: start - offset] + self._mask(match.group(group)) + whole[end - offset :]

    def _user_replacer(self, pattern: re.Pattern[str]) -> Callable[[re.Match[str]], str]:
        has_secret = "secret" in pattern.groupindex

        def replace(match: re.Match[str]) -> str:
            if not has_secret or not match.group("secret"):
                whole = match.group()
                return whole if not whole or _MARKER.fullmatch(whole) else self._mask(whole)
            if _MARKER.fullmatch(match.group("secret")):
                return match.group()
            start, end = match.span("secret")
            whole, offset = match.group(), match.start()
            return whole[: start - offset] + self._mask(match.group("secret")) + whole[end - offset :]

        return replace

    # --- JSON ---------------------------------------------------------------------------------

    def _scan_json(self, text: str, depth: int) -> str:
        try:
            # stdlib json, not orjson: orjson turns integers beyond 64 bits into floats, which a
            # re-dump would then silently change.
            data = json.loads(text, parse_float=_finite_float, parse_constant=_reject_constant)
        except ValueError as exc:  # JSONDecodeError is a ValueError
            raise _JsonNotParsed(text) from exc
        new, changed = self._walk(data, depth)
        if not changed:
            return text
        try:
            return orjson.dumps(new).decode("utf-8")
        except TypeError:  # integers beyond 64 bits, lone surrogates: the slower encoder takes them
            return json.dumps(new, ensure_ascii=False, separators=(",", ":"))

    def _walk(self, node: Any, depth: int) -> tuple[Any, bool]:
        if isinstance(node, str):
            new = self._scan(node, depth + 1)
            return new, new is not node
        if isinstance(node, list):
            items = [self._walk(item, depth) for item in node]
            if any(changed for _, changed in items):
                return [item for item, _ in items], True
            return node, False
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            changed = False
            for key, value in node.items():
                new_key = self._scan(key, depth + 1) if isinstance(key, str) else key
                tier = self._key_tier(key) if isinstance(key, str) else _KEEP
                if tier and _masks(tier, value) and not (isinstance(value, str) and _MARKER.fullmatch(value)):
                    new_value: Any = self._mask(_canonical(value))
                    item_changed = True
                else:
                    new_value, item_changed = self._walk(value, depth)
                out[new_key] = new_value
                changed = changed or item_changed or new_key is not key
            return (out, True) if changed else (node, False)
        return node, False

    def _mask(self, secret: str) -> str:
        if self._mode == "mask":
            return MASK
        digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
        return f"[REDACTED:{digest[:12]}]"


def _may_match(text: str) -> bool:
    """False when no built-in pattern can match ``text`` (checked with substring tests only)."""
    for trigger in _LITERAL_TRIGGERS:
        if trigger in text:
            return True
    if ("://" in text and "@" in text) or ("gh" in text and "_" in text):  # URL password; gh?_ / github_pat_
        return True
    lower = text.lower()
    if "bearer" in lower:
        return True
    if ":" in text or "=" in text:
        for trigger in _PAIR_TRIGGERS:
            if trigger in lower:
                return True
    return False


def _masks(tier: int, value: object) -> bool:
    """Does a key of this tier mask this value? A tuple goes by its items' type."""
    if tier == _MASK_ALL:
        return True
    if isinstance(value, (tuple, list)):
        if not value:
            return False
        value = value[0]
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return tier == _MASK_NON_BOOL
    return True


def _canonical(value: object) -> str:
    """The text hashed in ``"hash"`` mode: equal values give equal tags."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=repr)


def _compile_user_pattern(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        return pattern
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"Redactor: pattern {pattern!r} is not a valid regex: {exc}") from exc
