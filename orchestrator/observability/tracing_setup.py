"""Tracing on or off for one process: the SDK's tracer provider, built from ``observability.tracing`` and
the standard ``OTEL_*`` variables, which win over the settings file, exporting over OTLP (HTTP/protobuf or
gRPC). Off (the default, or ``OTEL_SDK_DISABLED=true``) there is no provider at all: the saga's spans and
the instrumentations are never set up, and every span is the API's no-op.

Only the composition root calls this; everything else receives the provider (or None) it built.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Literal
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from orchestrator.settings import TracingSettings

Protocol = Literal["http/protobuf", "grpc"]
ExporterName = Literal["otlp", "console", "none"]


@dataclass(frozen=True, slots=True)
class TracingPlan:
    """What this process will do, after the ``OTEL_*`` variables had their say (the start-up log shows it)."""

    exporter: ExporterName
    protocol: Protocol
    #: the traces endpoint handed to the exporter; None: the exporter reads ``OTEL_EXPORTER_OTLP_*`` (or
    #: uses its default, localhost)
    endpoint: str | None
    #: None: the SDK reads ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``
    sample_ratio: float | None
    service_name: str | None
    #: what was set but could not be used (named in the start-up log)
    ignored: tuple[str, ...] = ()

    def describe(self) -> dict[str, str]:
        """For the start-up log: no credentials (an endpoint is shown as scheme, host and port)."""
        where = "from OTEL_EXPORTER_OTLP_* or the default"
        if self.endpoint is not None:
            parts = urlsplit(self.endpoint)
            where = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        sampler = "from OTEL_TRACES_SAMPLER"
        if self.sample_ratio is not None:
            sampler = f"parent-based, ratio {self.sample_ratio}"
        return {"exporter": self.exporter, "protocol": self.protocol, "endpoint": where, "sampler": sampler}


def _env(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def enabled(settings: TracingSettings, environ: Mapping[str, str] = os.environ) -> bool:
    return settings.enabled and _env(environ, "OTEL_SDK_DISABLED") not in ("true", "TRUE", "True")


def plan(settings: TracingSettings, environ: Mapping[str, str] = os.environ) -> TracingPlan:
    ignored: list[str] = []
    exporter: ExporterName = "otlp"
    named = _env(environ, "OTEL_TRACES_EXPORTER")
    if named is not None:
        first = named.split(",")[0].strip().lower()
        if first in ("otlp", "console", "none"):
            exporter = first  # type: ignore[assignment]
        else:
            ignored.append(f"OTEL_TRACES_EXPORTER={first} (this build exports otlp, console or none)")
    protocol: Protocol = settings.protocol
    asked = _env(environ, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    if asked in ("grpc", "http/protobuf"):
        protocol = asked  # type: ignore[assignment]
    elif asked is not None:
        ignored.append(f"OTEL_EXPORTER_OTLP_PROTOCOL={asked} (this build speaks grpc or http/protobuf)")
    endpoint: str | None = None
    named = _env(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    if named is None and settings.endpoint:
        # The setting is a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is: HTTP adds the signal's path.
        endpoint = settings.endpoint + "/v1/traces" if protocol == "http/protobuf" else settings.endpoint
    ratio = None if _env(environ, "OTEL_TRACES_SAMPLER") is not None else settings.sample_ratio
    named_service = _env(environ, "OTEL_SERVICE_NAME") is not None or "service.name=" in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    service = None if named_service else settings.service_name
    return TracingPlan(exporter, protocol, endpoint, ratio, service, tuple(ignored))


def _exporter(chosen: TracingPlan) -> SpanExporter | None:
    if chosen.exporter == "none":
        return None
    if chosen.exporter == "console":
        return ConsoleSpanExporter()
    if chosen.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=chosen.endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=chosen.endpoint)


def _service_version() -> str:
    try:
        return version("saga-orchestrator")
    except PackageNotFoundError:
        return "0+unknown"


class NoOrphanClients(Sampler):
    """Never starts a trace with a CLIENT span: a call to Redis (or any dependency) with nothing above it is
    background work (the projector's batches, a health probe), not worth a trace of its own. Every other
    root is ``root``'s to decide; a span with a parent is not asked (``ParentBased`` decides those)."""

    def __init__(self, root: Sampler) -> None:
        self._root = root

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT and not get_current_span(parent_context).get_span_context().is_valid:
            return SamplingResult(Decision.DROP)
        return self._root.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"NoOrphanClients{{{self._root.get_description()}}}"


def build_provider(chosen: TracingPlan, *, exporter: SpanExporter | None = None) -> TracerProvider:
    """The SDK provider for ``chosen``, exporting in batches (``OTEL_BSP_*`` tune them) to ``exporter``
    or the one the plan names. The caller shuts it down (which flushes)."""
    attributes: dict[str, str] = {SERVICE_VERSION: _service_version()}
    if chosen.service_name is not None:
        attributes[SERVICE_NAME] = chosen.service_name
    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME.
    resource = Resource.create(attributes)
    sampler: Sampler | None = None
    if chosen.sample_ratio is not None:
        sampler = ParentBased(root=NoOrphanClients(TraceIdRatioBased(chosen.sample_ratio)))
    provider = TracerProvider(resource=resource, sampler=sampler)
    target = exporter if exporter is not None else _exporter(chosen)
    if target is not None:
        provider.add_span_processor(BatchSpanProcessor(target))
    return provider
