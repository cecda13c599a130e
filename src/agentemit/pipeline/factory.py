"""Compose a pipeline from a store or sink: the standard stages and sink wrappers in one place."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentemit.pipeline.config import PipelineConfig
from agentemit.pipeline.filters import SpanPredicate, predicate_filter, require_rollout
from agentemit.pipeline.pipeline import Pipeline
from agentemit.pipeline.sink import Sink, StoreSink
from agentemit.span import Span
from agentemit.stores.base import SpanStore

Stage = Callable[[Span], "Span | None"]


def default_stages(
    config: PipelineConfig, *, requires_rollout: bool, span_filter: SpanPredicate | None = None
) -> list[Stage]:
    """Filter chain then redaction: rollout-less spans (if the store needs them), the user's predicate."""
    stages: list[Stage] = []
    if requires_rollout:
        stages.append(require_rollout)
    if span_filter is not None:
        stages.append(predicate_filter(span_filter))
    if config.redact:
        from agentemit.pipeline.redact import Redactor

        stages.append(Redactor())
    return stages


def build_pipeline(
    *,
    store: SpanStore | None = None,
    sink: Sink | None = None,
    config: PipelineConfig | None = None,
    span_filter: SpanPredicate | None = None,
    stages: Sequence[Stage] | None = None,
    resource: Mapping[str, Any] | None = None,
    start: bool = True,
) -> Pipeline:
    """A started pipeline delivering to ``sink`` (or a store sink over ``store``)."""
    if sink is None:
        if store is None:
            raise ValueError("build_pipeline: give a store or a sink")
        sink = StoreSink(store, close_store=False)  # the caller's store: they close it
    config = config or PipelineConfig.from_env()
    requires_rollout = store.requires_rollout if store is not None else True
    chosen = (
        list(stages)
        if stages is not None
        else default_stages(config, requires_rollout=requires_rollout, span_filter=span_filter)
    )
    return Pipeline(sink, config, stages=chosen, resource=resource, start=start)
