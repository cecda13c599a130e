"""``AgentOpsTracer``: collects the spans of the AgentOps SDK's instrumentation into rollouts.

Agent Lightning's AgentOpsTracer relies on AgentOps, whose SDK instruments LLM client libraries with
OpenTelemetry and records decorated operations as spans. When the ``agentops`` package is importable,
``init()`` initializes it (without auto-starting a session) and attaches our rollout span processor
to the TracerProvider AgentOps made, so its spans started inside ``trace_context`` are collected like
any other OpenTelemetry span. Without ``agentops`` the tracer works as an :class:`OtelTracer`.

Either way, AgentOps-style operation outputs are understood: a span whose ``agentops.task.output`` or
``agentops.entity.output`` holds ``{"type": "reward", "value": x}`` is a reward span for every reader
(``find_final_reward``) and store (``list_rollouts``' ``final_reward``).

Our provider is installed before AgentOps initializes, so it stays the global one: spans AgentOps
starts through the global API reach our pipeline and are not sent to AgentOps' service by it.
"""

from __future__ import annotations

import importlib
import logging
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from agentemit.stores.base import SpanStore
from agentemit.tracing.otel import OtelTracer, attach_rollout_processor, install_provider

logger = logging.getLogger("agentemit.tracing.agentops")

_HOOK_LOCK = threading.Lock()
_hooked: weakref.WeakSet[TracerProvider] = weakref.WeakSet()  # providers our processor is attached to


def import_agentops() -> Any:
    """The ``agentops`` module, or None when it is not installed."""
    try:
        return importlib.import_module("agentops")
    except ImportError:
        return None


def agentops_provider(agentops: Any) -> TracerProvider | None:
    """The SDK TracerProvider an initialized AgentOps uses, across its SDK versions; None if not found."""
    try:
        core = importlib.import_module("agentops.sdk.core")
    except ImportError:
        return None
    candidates: list[Any] = []
    tracing_core = getattr(core, "tracer", None)  # newer SDKs: one module-level TracingCore
    if tracing_core is not None:
        candidates.append(getattr(tracing_core, "provider", None))
    legacy = getattr(core, "TracingCore", None)  # older SDKs: a singleton
    if legacy is not None and hasattr(legacy, "get_instance"):
        instance = legacy.get_instance()
        candidates += [getattr(instance, "provider", None), getattr(instance, "_provider", None)]
    return next((c for c in candidates if isinstance(c, TracerProvider)), None)


def attach_processor(provider: TracerProvider) -> bool:
    """Attach our rollout span processor to ``provider`` once; True when newly attached.

    A TracerProvider cannot remove a processor, so it stays attached; that is harmless because the
    processor only takes spans of rollouts open in a ``trace_context``.
    """
    with _HOOK_LOCK:
        if provider is install_provider() or provider in _hooked:
            return False
        attach_rollout_processor(provider)
        _hooked.add(provider)
        return True


class AgentOpsTracer(OtelTracer):
    """An :class:`OtelTracer` that also collects AgentOps' OpenTelemetry spans.

    Args:
        store: as for :class:`OtelTracer`.
        agentops_managed: call ``agentops.init`` in :meth:`init` unless AgentOps' client is already
            initialized. With False, initialize AgentOps yourself before :meth:`init`.
        agentops_options: keyword arguments for ``agentops.init`` (``api_key``, ``endpoint``, ...);
            ``auto_start_session`` defaults to False: rollouts, not AgentOps sessions, group spans.
        **options: any other :class:`OtelTracer` argument.
    """

    def __init__(
        self,
        store: SpanStore | None = None,
        *,
        agentops_managed: bool = True,
        agentops_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(store, **options)
        self.agentops_managed = agentops_managed
        self.agentops_options: dict[str, Any] = {"auto_start_session": False, **(agentops_options or {})}
        self.agentops_active = False  # True once AgentOps' spans are routed into our rollouts
        self._agentops_lock = threading.Lock()
        self._agentops_tried = False

    def init(self) -> None:
        super().init()
        with self._agentops_lock:
            if self._agentops_tried:
                return
            self._agentops_tried = True
            self.agentops_active = self._hook_agentops()

    def _hook_agentops(self) -> bool:
        agentops = import_agentops()
        if agentops is None:
            logger.info(
                "agentops tracer: the agentops package is not installed; collecting OpenTelemetry spans and "
                "AgentOps-style reward spans from other producers only (pip install agentops to instrument LLM clients)"
            )
            return False
        try:
            if self.agentops_managed and not _client_initialized(agentops):
                agentops.init(**self.agentops_options)
            provider = agentops_provider(agentops)
            if provider is not None:
                attach_processor(provider)
            return True
        except Exception:
            logger.warning("agentops tracer: initializing agentops failed; its spans are not collected", exc_info=True)
            return False


def _client_initialized(agentops: Any) -> bool:
    get_client = getattr(agentops, "get_client", None)
    if get_client is None:
        return False
    return bool(getattr(get_client(), "initialized", False))
