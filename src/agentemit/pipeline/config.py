"""Pipeline configuration: validated once, from arguments and ``AGENTEMIT_*`` environment variables.

Arguments win over the environment, the environment over defaults. Every bad value is reported
with the setting's name (and the variable's, when it came from the environment) and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from agentemit.compression import COMPRESSIONS, Compression

OverflowPolicy: TypeAlias = Literal["spill", "block", "drop_oldest", "drop_newest"]
OVERFLOW_POLICIES: tuple[OverflowPolicy, ...] = ("spill", "block", "drop_oldest", "drop_newest")
Durability: TypeAlias = Literal["none", "batch", "always"]
DURABILITIES: tuple[Durability, ...] = ("none", "batch", "always")

# Event kinds the pipeline knows by name; custom kinds are "event.<name>", third-party spans "otel".
HIGH_PRIORITY_KINDS = frozenset({"reward", "exception"})
KNOWN_KINDS: tuple[str, ...] = ("exception", "message", "object", "otel", "reward")
CUSTOM_KIND_PREFIX = "event."

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", re.IGNORECASE)
_BYTE_SETTINGS = frozenset({"memory_threshold", "spool_max_bytes"})
MIN_MEMORY_THRESHOLD = 8192  # smaller holds only a handful of events: surely "100" meant 100MB


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting and what it accepts.

    ``setting`` is the field name at fault (None when the error is not about one field).
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Every knob of the delivery pipeline (see docs/ARCHITECTURE.md for how they interact).

    Per-kind mappings (``kind_sample_rates``, ``kind_overflow``, ``rate_limits``) are keyed by raw
    record kind: ``message``, ``reward``, ``exception``, ``object``, ``otel`` (spans of other
    instrumentation) or ``event.<name>`` (a registered event type); a misspelt kind is an error.

    Raises:
        ConfigError: a value out of range or of the wrong type, naming the setting.
    """

    sample_rate: float = 1.0
    kind_sample_rates: Mapping[str, float] = field(default_factory=dict)  # e.g. {"message": 0.1}
    memory_threshold: int = 100 * 1024 * 1024
    max_queue_size: int = 1_000_000
    batch_size: int = 100
    # Spans per export when more are waiting (a backlog in the queue, a spool drain). A sink pays per
    # export (an HTTP request costs ~500 us of CPU, a commit a WAL append), so a backlog goes in bulk.
    max_export_batch: int = 1_000
    flush_interval: float = 5.0
    overflow: OverflowPolicy = "spill"
    kind_overflow: Mapping[str, OverflowPolicy] = field(default_factory=dict)
    block_timeout: float = 1.0
    spool_dir: Path | None = None  # None: a per-user directory under the system temp dir
    spool_max_bytes: int = 1 << 30
    durability: Durability = "batch"
    compression: Compression = "zstd"  # spool records: 4x (random text) to 50x+ smaller; spilling keeps pace
    # A failed sink is retried from the spool, first after retry_base_delay, then after twice as long
    # each time up to retry_max_delay (jittered), and never before a server's Retry-After (delivery.py).
    retry_base_delay: float = 0.1
    retry_max_delay: float = 5.0
    rate_limits: Mapping[str, float] = field(default_factory=dict)  # kind -> events/s (token bucket)
    adaptive_sampling: bool = False  # opt-in: a CPU-bound agent thread alone would trigger shedding
    shutdown_timeout: float = 5.0
    redact: bool = True

    def __post_init__(self) -> None:
        _check_rate("sample_rate", self.sample_rate)
        for kind, rate in _check_kinds("kind_sample_rates", self.kind_sample_rates).items():
            _check_rate(f"kind_sample_rates[{kind!r}]", rate, setting="kind_sample_rates")
        _check_positive_int("memory_threshold", self.memory_threshold)
        if self.memory_threshold < MIN_MEMORY_THRESHOLD:
            raise ConfigError(
                f"memory_threshold must be at least {MIN_MEMORY_THRESHOLD:,} bytes (room for a few events), got "
                f"{self.memory_threshold!r}; a plain number is bytes: write 100MB for megabytes",
                setting="memory_threshold",
            )
        _check_positive_int("max_queue_size", self.max_queue_size)
        _check_positive_int("batch_size", self.batch_size)
        _check_positive_int("max_export_batch", self.max_export_batch)
        _check_positive_int("spool_max_bytes", self.spool_max_bytes)
        for name in ("flush_interval", "block_timeout", "shutdown_timeout", "retry_max_delay"):
            _check_seconds(name, getattr(self, name), allow_zero=False)
        _check_seconds("retry_base_delay", self.retry_base_delay, allow_zero=True)
        _check_choice("overflow", self.overflow, OVERFLOW_POLICIES)
        for kind, policy in _check_kinds("kind_overflow", self.kind_overflow).items():
            _check_choice(f"kind_overflow[{kind!r}]", policy, OVERFLOW_POLICIES, setting="kind_overflow")
        _check_choice("durability", self.durability, DURABILITIES)
        _check_choice("compression", self.compression, COMPRESSIONS)
        for kind, rate in _check_kinds("rate_limits", self.rate_limits).items():
            if not _is_number(rate) or not math.isfinite(rate) or not rate > 0:
                raise ConfigError(
                    f"rate_limits[{kind!r}] must be a finite number of events per second > 0, got {rate!r}",
                    setting="rate_limits",
                )
        for name in ("adaptive_sampling", "redact"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}", setting=name)
        if self.spool_dir is not None:
            if not isinstance(self.spool_dir, (str, os.PathLike)) or not os.fspath(self.spool_dir):
                raise ConfigError(
                    f"spool_dir must be a non-empty path or None, got {self.spool_dir!r}", setting="spool_dir"
                )
            object.__setattr__(self, "spool_dir", Path(self.spool_dir))

    def overflow_for(self, kind: str) -> OverflowPolicy:
        return self.kind_overflow.get(kind, self.overflow)

    def sample_rate_for(self, kind: str) -> float:
        """Rewards and exceptions are kept whole unless a per-kind rate says otherwise."""
        if kind in self.kind_sample_rates:
            return self.kind_sample_rates[kind]
        return 1.0 if kind in HIGH_PRIORITY_KINDS else self.sample_rate

    def resolved_spool_dir(self) -> Path:
        if self.spool_dir is not None:
            return Path(self.spool_dir)
        import tempfile

        return Path(tempfile.gettempdir()) / f"agentemit-spool-{os.getuid() if hasattr(os, 'getuid') else 'user'}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> PipelineConfig:
        """Build from ``AGENTEMIT_<SETTING>`` variables, then ``overrides``.

        Variables hold numbers, ``true``/``false``, a policy name, a path, sizes with a unit
        (``AGENTEMIT_MEMORY_THRESHOLD=200MB``) or per-kind lists (``AGENTEMIT_RATE_LIMITS=message=100,object=10``).

        Raises:
            ConfigError: a variable or override with a bad value (naming the variable), or an unknown
                override.
        """
        env = os.environ if env is None else env
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise ConfigError(f"unknown pipeline setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        from_vars: dict[str, str] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"AGENTEMIT_{f.name.upper()}")
            if raw is None or f.name in overrides:
                continue
            values[f.name] = _parse_env(f.name, raw, f.type)
            from_vars[f.name] = raw
        values.update(overrides)
        try:
            return cls(**values)
        except ConfigError as exc:
            name = exc.setting
            if name is None or name not in from_vars:
                raise
            var = f"AGENTEMIT_{name.upper()}"
            raise ConfigError(f"{var}={from_vars[name]!r}: {exc}", setting=name) from exc


def _parse_env(name: str, raw: str, annotation: Any) -> Any:
    text = str(annotation)
    var = f"AGENTEMIT_{name.upper()}"
    try:
        if text.startswith("Mapping"):
            out: dict[str, Any] = {}
            for part in filter(None, (p.strip() for p in raw.split(","))):
                key, sep, value = part.partition("=")
                if not sep or not key.strip():
                    raise ValueError(f"entry {part!r} is not kind=value")
                try:
                    out[key.strip()] = value.strip() if "Policy" in text else float(value)
                except ValueError:
                    raise ValueError(f"entry {part!r}: {value.strip()!r} is not a number") from None
            return out
        if text == "bool":
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if text == "int":
            return _parse_size(raw) if name in _BYTE_SETTINGS else int(raw)
        if text == "float":
            return float(raw)
        if text.startswith("Path"):
            return Path(raw) if raw else raw
        return raw
    except ValueError as exc:
        raise ConfigError(f"{var}={raw!r} is not valid: {exc}", setting=name) from exc


def _parse_size(raw: str) -> int:
    """``1048576``, ``100MB``, ``1.5GiB``, ``512k``: bytes (units are powers of 1024 either way)."""
    match = _SIZE.fullmatch(raw)
    if match is None:
        raise ValueError("expected a number of bytes, optionally with a unit (KB, MB, GB, TB)")
    number, unit, _ = match.groups()
    try:
        return int(float(number) * 1024 ** " kmgt".index(unit.lower() or " "))
    except OverflowError:  # hundreds of digits: float() gives inf, int(inf) overflows
        raise ValueError("is too large a number of bytes") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_kinds(setting: str, mapping: Any) -> Mapping[str, Any]:
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{setting} must be a mapping of kind to value, got {mapping!r}", setting=setting)
    for kind in mapping:
        custom = isinstance(kind, str) and kind.startswith(CUSTOM_KIND_PREFIX) and len(kind) > len(CUSTOM_KIND_PREFIX)
        if kind not in KNOWN_KINDS and not custom:
            raise ConfigError(
                f"{setting}: unknown kind {kind!r}; expected one of {', '.join(KNOWN_KINDS)} or 'event.<name>'",
                setting=setting,
            )
    return mapping


def _check_rate(name: str, value: Any, *, setting: str | None = None) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a number from 0.0 to 1.0, got {value!r}", setting=setting or name)


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be an integer > 0, got {value!r}", setting=name)


def _check_seconds(name: str, value: Any, *, allow_zero: bool) -> None:
    ok = _is_number(value) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite number of seconds {bound}, got {value!r}", setting=name)
    if value > threading.TIMEOUT_MAX:  # a longer wait raises OverflowError in the worker, which would stop
        raise ConfigError(
            f"{name} must be at most {threading.TIMEOUT_MAX:.3g} seconds (the longest wait threads allow), "
            f"got {value!r}",
            setting=name,
        )


def _check_choice(name: str, value: Any, choices: tuple[str, ...], *, setting: str | None = None) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}", setting=setting or name)
