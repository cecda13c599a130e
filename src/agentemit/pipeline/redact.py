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
   Secrets are masked before cutting, so a cut never leaves half a secret behind. A cut is not a
   loss: the span is still delivered, marked, and counted under ``truncated`` in the stage's stats
   (``stats()["redaction"]``), never under a drop reason. Events too large to hold or deliver at all
   are the pipeline's ``oversize`` drops (see ``pipeline/stats.py``).

Redaction is idempotent: redacting a redacted span changes nothing. A rule that raises (a user
callback, or a bug) never loses the span: the one value becomes ``[REDACTED:error]``.

The stage runs on every span, and almost every span has nothing to redact, so a check that allocates
nothing proves that first (``Redactor._unchanged``: cached per-key plans, a type check for numbers,
substring tests and a bounded cache of clean short texts); only a span it cannot clear takes the full
path. The rules themselves (key names, patterns, triggers) live in ``_redact_rules``.
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
from agentemit.pipeline._redact_rules import (
    BUILTIN_MIN_LEN,
    BUILTIN_RULES,
    EXEMPT_PREFIXES,
    IDENTITY_KEYS,
    JSON_KEYS,
    JSON_START,
    KEEP,
    MARKER,
    MASK_ALL,
    PAIR_TRIGGERS,
    PRIVATE_KEY,
    builtin_key_tier,
    canonical,
    compile_user_pattern,
    masks,
    may_match,
    normalize_key,
)
from agentemit.span import Attributes, AttributeValue, Span, SpanEvent

__all__ = [
    "ERROR_MASK",
    "JSON_KEYS",
    "MASK",
    "STATUS_DESCRIPTION_KEY",
    "TRUNCATED_MARKER_SUFFIX",
    "RedactCallback",
    "RedactMode",
    "RedactionStats",
    "Redactor",
    "normalize_key",
]

RedactMode: TypeAlias = Literal["mask", "hash"]
RedactCallback: TypeAlias = Callable[[str, AttributeValue], AttributeValue | None]

MASK: Final = "[REDACTED]"
ERROR_MASK: Final = "[REDACTED:error]"
STATUS_DESCRIPTION_KEY: Final = "status_description"  # the key a callback sees for the status description
TRUNCATED_MARKER_SUFFIX: Final = ".truncated"  # ``<key>.truncated = True`` marks a trimmed tuple
_WINDOW_MARGIN: Final = 4096  # scan this far past the size limit so a secret across the cut is still found
_MAX_PASSES: Final = 4  # redact-and-cut until nothing changes (each pass after the first is rare)
_CACHE_LIMIT: Final = 4096  # entries per cache (key tiers, key plans, clean texts); full means cleared
_CLEAN_TEXT_MAX_LEN: Final = 128  # texts up to this long are remembered as clean (ids, names, labels)
# What the fast check does with a key (see Redactor._unchanged).
_CHECK_VALUE, _SKIP, _FULL_PATH = 0, 1, 2
_JSON_FIRST: Final = '[{"'  # a text starting so (after any whitespace) may be JSON


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
        compiled = [compile_user_pattern(p) for p in patterns]
        self._user_patterns = [(p, self._user_replacer(p)) for p in compiled]
        self._user_keys = frozenset(normalize_key(k) for k in keys)
        self._combined = re.compile(
            "|".join(
                f"(?P<r{i}>{body.replace('(?P<secret>', f'(?P<s{i}>')})" for i, (_, body) in enumerate(BUILTIN_RULES)
            )
        )
        self._secret_group = [f"s{i}" if "(?P<secret>" in body else None for i, (_, body) in enumerate(BUILTIN_RULES)]
        # A JSON object key the key rule could match holds one of these (lowercased) substrings.
        self._json_key_triggers = PAIR_TRIGGERS + tuple(max(re.split(r"[._]", k), key=len) for k in self._user_keys)
        self._key_tiers: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stats = RedactionStats()
        # The fast check (see _unchanged). A callback sees every value, so it turns the check off.
        self._fast = callback is None
        self._user_searches = tuple(pattern.search for pattern in compiled)
        self._key_plans: dict[str, int] = {}
        self._clean_texts: dict[str, None] = {}  # an insertion-ordered set; values are all None
        self._description_checked = self._key_tier(STATUS_DESCRIPTION_KEY) == KEEP
        # Every span of a pipeline shares one resource dict: the last one found clean, and a copy
        # of it, so a shared resource is compared in C instead of walked again for every span.
        self._clean_resource: tuple[Mapping[str, AttributeValue], dict[str, AttributeValue]] | None = None

    # --- public -------------------------------------------------------------------------------

    def __call__(self, span: Span) -> Span:
        """Return ``span`` itself when nothing needed redacting, else a redacted copy."""
        if not self.enabled:
            return span
        if self._fast:
            try:
                if self._unchanged(span):
                    return span
            except Exception:  # the full path below decides, and handles errors per value
                pass
        return self._redact(span)

    def stats(self) -> RedactionStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats

    def redact_text(self, text: str) -> str:
        """Apply the pattern and size rules to one string (as if it were an attribute value)."""
        return self._text(text, "", _Tally())

    # --- the fast check -----------------------------------------------------------------------

    def _unchanged(self, span: Span) -> bool:
        """True when no rule would change ``span``, decided without allocating anything.

        Almost every span has nothing to redact, and this check costs a fraction of the full path:
        a key's plan is cached (identity keys are skipped, secret keys take the full path), numbers
        and bools under other keys are never changed, and a text is clean when it is within the size
        limit and no pattern can match it (short clean texts are remembered). False only means "take
        the full path", which decides for itself.
        """
        if not self._clean(span.attributes):
            return False
        resource = span.resource
        if resource and not self._resource_clean(resource):
            return False
        for event in span.events:
            if event.attributes and not self._clean(event.attributes):
                return False
        description = span.status_description
        return description is None or (self._description_checked and self._clean_text(description))

    def _resource_clean(self, resource: Mapping[str, AttributeValue]) -> bool:
        last = self._clean_resource
        if last is not None and last[0] is resource and resource == last[1]:  # same dict, unchanged
            return True
        if not self._clean(resource):
            return False
        self._clean_resource = (resource, dict(resource))
        return True

    def _clean(self, attrs: Mapping[str, AttributeValue]) -> bool:
        plans, texts = self._key_plans, self._clean_texts
        last_text = None  # one message is often under two keys (the body and its legacy alias)
        for key, value in attrs.items():
            plan = plans.get(key)
            if plan is None:
                plan = self._plan(key)
            if plan:
                if plan == _SKIP:
                    continue
                return False
            cls = type(value)
            if cls is str:
                if value is last_text or (len(value) <= _CLEAN_TEXT_MAX_LEN and value in texts):  # type: ignore[arg-type]
                    continue
                if not self._clean_text(value):  # type: ignore[arg-type]
                    return False
                last_text = value
            elif cls is float or cls is int or cls is bool:
                continue
            elif cls is not tuple or not self._clean_tuple(value):  # type: ignore[arg-type]
                return False
        return True

    def _clean_tuple(self, value: tuple[Any, ...]) -> bool:
        if len(value) > self._max_items:
            return False
        if not value or not isinstance(value[0], str):
            return True  # as in _tuple: only a tuple that starts with a str has its items scanned
        texts = self._clean_texts
        for item in value:
            if type(item) is str:
                if not (len(item) <= _CLEAN_TEXT_MAX_LEN and item in texts) and not self._clean_text(item):
                    return False
            elif isinstance(item, str):
                return False
        return True

    def _clean_text(self, text: str) -> bool:
        """True when the pattern and size rules leave ``text`` as it is; short clean texts are remembered."""
        if len(text) > self._max_len:
            return False
        first = text[:1]
        if first and (first in _JSON_FIRST or first.isspace()):  # may be JSON: as in _scan
            if may_match(text) or any(word in text.lower() for word in self._json_key_triggers):
                return False
        elif len(text) >= BUILTIN_MIN_LEN and may_match(text):
            return False
        if self._user_searches and any(search(text) for search in self._user_searches):
            return False
        if len(text) <= _CLEAN_TEXT_MAX_LEN:
            texts = self._clean_texts
            if len(texts) >= _CACHE_LIMIT:
                texts.clear()
            texts[text] = None
        return True

    def _plan(self, key: object) -> int:
        if not isinstance(key, str):
            plan = _FULL_PATH
        elif key in IDENTITY_KEYS:
            plan = _SKIP
        else:
            plan = _FULL_PATH if self._key_tier(key) else _CHECK_VALUE
        if len(self._key_plans) >= _CACHE_LIMIT:
            self._key_plans.clear()
        self._key_plans[key] = plan  # type: ignore[index]
        return plan

    # --- the full path ------------------------------------------------------------------------

    def _redact(self, span: Span) -> Span:
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
        if key in IDENTITY_KEYS:
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
        if tier and masks(tier, value):
            if isinstance(value, str) and MARKER.fullmatch(value):
                return value
            tally.redacted += 1
            return self._mask(canonical(value))
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
                tier = MASK_ALL
            elif key.startswith(EXEMPT_PREFIXES):
                tier = KEEP
            else:
                tier = builtin_key_tier(last)
            if len(self._key_tiers) >= _CACHE_LIMIT:
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
        if depth < 2 and JSON_START.match(text):
            if not (
                may_match(text)
                or any(word in text.lower() for word in self._json_key_triggers)
                or any(pattern.search(text) for pattern, _ in self._user_patterns)
            ):
                return text  # no rule can match anywhere in it
            try:
                return self._scan_json(text, depth)
            except _JsonNotParsed:
                pass
        out = text
        if len(text) >= BUILTIN_MIN_LEN and may_match(text):
            new = text
            if "-----BEGIN" in new:
                new = PRIVATE_KEY.sub(lambda match: self._mask(match.group()), new)
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
                return whole if not whole or MARKER.fullmatch(whole) else self._mask(whole)
            if MARKER.fullmatch(match.group("secret")):
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
                tier = self._key_tier(key) if isinstance(key, str) else KEEP
                if tier and masks(tier, value) and not (isinstance(value, str) and MARKER.fullmatch(value)):
                    new_value: Any = self._mask(canonical(value))
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
