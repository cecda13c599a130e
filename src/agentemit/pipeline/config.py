"""Pipeline configuration: validated once, from arguments and ``AGENTEMIT_*`` environment variables.

Arguments win over the environment, the environment over defaults. Every bad value is reported
with the setting's name and the accepted range.
"""

from __future__ import annotations

import dataclasses
import os
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


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting and what it accepts."""


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Every knob of the delivery pipeline (see docs/ARCHITECTURE.md for how they interact)."""

    sample_rate: float = 1.0
    kind_sample_rates: Mapping[str, float] = field(default_factory=dict)  # e.g. {"message": 0.1}
    memory_threshold: int = 100 * 1024 * 1024
    max_queue_size: int = 1_000_000
    batch_size: int = 100
    flush_interval: float = 5.0
    overflow: OverflowPolicy = "spill"
    kind_overflow: Mapping[str, OverflowPolicy] = field(default_factory=dict)
    block_timeout: float = 1.0
    spool_dir: Path | None = None  # None: a per-user directory under the system temp dir
    spool_max_bytes: int = 1 << 30
    durability: Durability = "batch"
    compression: Compression = "none"  # spool records
    max_attempts: int = 5
    retry_base_delay: float = 0.1
    retry_max_delay: float = 5.0
    rate_limits: Mapping[str, float] = field(default_factory=dict)  # kind -> events/s (token bucket)
    adaptive_sampling: bool = True
    shutdown_timeout: float = 5.0
    redact: bool = True

    def __post_init__(self) -> None:
        _check_rate("sample_rate", self.sample_rate)
        for kind, rate in self.kind_sample_rates.items():
            _check_rate(f"kind_sample_rates[{kind!r}]", rate)
        _check_positive_int("memory_threshold", self.memory_threshold)
        _check_positive_int("max_queue_size", self.max_queue_size)
        _check_positive_int("batch_size", self.batch_size)
        _check_positive_int("spool_max_bytes", self.spool_max_bytes)
        _check_positive_int("max_attempts", self.max_attempts)
        for name in ("flush_interval", "block_timeout", "shutdown_timeout", "retry_max_delay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"{name} must be a number > 0, got {value!r}")
        if not isinstance(self.retry_base_delay, (int, float)) or self.retry_base_delay < 0:
            raise ConfigError(f"retry_base_delay must be a number >= 0, got {self.retry_base_delay!r}")
        _check_choice("overflow", self.overflow, OVERFLOW_POLICIES)
        for kind, policy in self.kind_overflow.items():
            _check_choice(f"kind_overflow[{kind!r}]", policy, OVERFLOW_POLICIES)
        _check_choice("durability", self.durability, DURABILITIES)
        _check_choice("compression", self.compression, COMPRESSIONS)
        for kind, rate in self.rate_limits.items():
            if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not rate > 0:
                raise ConfigError(f"rate_limits[{kind!r}] must be events per second > 0, got {rate!r}")

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
        """Build from ``AGENTEMIT_<SETTING>`` variables, then ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"AGENTEMIT_{f.name.upper()}")
            if raw is None or f.name in overrides:
                continue
            values[f.name] = _parse_env(f.name, raw, f.type)
        values.update(overrides)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown pipeline setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)


def _parse_env(name: str, raw: str, annotation: Any) -> Any:
    text = str(annotation)
    var = f"AGENTEMIT_{name.upper()}"
    try:
        if text.startswith("Mapping"):
            out: dict[str, Any] = {}
            for part in filter(None, (p.strip() for p in raw.split(","))):
                key, _, value = part.partition("=")
                out[key.strip()] = value.strip() if "Policy" in text else float(value)
            return out
        if text == "bool":
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if text == "int":
            return int(raw)
        if text == "float":
            return float(raw)
        if text.startswith("Path"):
            return Path(raw)
        return raw
    except ValueError as exc:
        raise ConfigError(f"{var}={raw!r} is not valid: {exc}") from exc


def _check_rate(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a number from 0.0 to 1.0, got {value!r}")


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be an integer > 0, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
