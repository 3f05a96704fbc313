"""Tracing on or off, and what the standard ``OTEL_*`` variables change: they win over the settings."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from orchestrator.observability.tracing_setup import build_provider, enabled, plan
from orchestrator.settings import TracingSettings

ON = TracingSettings(enabled=True, endpoint="http://collector:4318", sample_ratio=0.25, service_name="saga-x")


def test_off_unless_switched_on_and_otel_sdk_disabled_wins() -> None:
    assert not enabled(TracingSettings(), {})
    assert enabled(ON, {})
    assert not enabled(ON, {"OTEL_SDK_DISABLED": "true"})
    assert enabled(ON, {"OTEL_SDK_DISABLED": "false"})


def test_the_settings_alone() -> None:
    chosen = plan(ON, {})
    assert chosen.exporter == "otlp"
    assert chosen.protocol == "http/protobuf"
    # A base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is: HTTP adds the signal's path.
    assert chosen.endpoint == "http://collector:4318/v1/traces"
    assert (chosen.sample_ratio, chosen.service_name, chosen.ignored) == (0.25, "saga-x", ())
    grpc = plan(TracingSettings(enabled=True, endpoint="http://collector:4317", protocol="grpc"), {})
    assert (grpc.protocol, grpc.endpoint) == ("grpc", "http://collector:4317")
    assert plan(TracingSettings(enabled=True), {}).endpoint is None  # the exporter's default


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_an_otel_endpoint_wins(variable: str) -> None:
    # None: the exporter reads the variable itself, with the specification's rules for each.
    assert plan(ON, {variable: "http://other:4318"}).endpoint is None


def test_otel_protocol_sampler_service_and_exporter_win() -> None:
    chosen = plan(
        ON,
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_TRACES_SAMPLER": "always_off",
            "OTEL_SERVICE_NAME": "from-env",
            "OTEL_TRACES_EXPORTER": "none",
        },
    )
    assert chosen.protocol == "grpc"
    assert chosen.endpoint == "http://collector:4318"  # gRPC: no signal path
    assert chosen.sample_ratio is None
    assert chosen.service_name is None
    assert chosen.exporter == "none"
    both = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    assert plan(ON, both).protocol == "http/protobuf"  # the signal's own variable first
    assert plan(ON, {"OTEL_RESOURCE_ATTRIBUTES": "team=a,service.name=env"}).service_name is None


def test_what_cannot_be_used_is_named() -> None:
    chosen = plan(ON, {"OTEL_TRACES_EXPORTER": "zipkin", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert (chosen.exporter, chosen.protocol) == ("otlp", "http/protobuf")
    assert [i.split("=")[0] for i in chosen.ignored] == [
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]


def test_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER"):
        monkeypatch.delenv(name, raising=False)
    quiet = {"OTEL_TRACES_EXPORTER": "none"}  # nothing leaves the test
    provider = build_provider(plan(ON, quiet))
    try:
        assert isinstance(provider, TracerProvider)
        assert provider.resource.attributes["service.name"] == "saga-x"
        assert "service.version" in provider.resource.attributes
        assert provider.sampler.get_description().startswith(
            "ParentBased{root:NoOrphanClients{TraceIdRatioBased{0.25}}"
        )
        tracer = provider.get_tracer("test")
        # A client call with nothing above it starts no trace; below a traced span it is traced.
        assert not tracer.start_span("GET", kind=SpanKind.CLIENT).is_recording()
        ratio = build_provider(plan(TracingSettings(enabled=True), quiet))
        with ratio.get_tracer("test").start_as_current_span("request", kind=SpanKind.SERVER) as parent:
            assert parent.is_recording()
            assert ratio.get_tracer("test").start_span("GET", kind=SpanKind.CLIENT).is_recording()
        ratio.shutdown()
    finally:
        provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = build_provider(
        plan(ON, {"OTEL_SERVICE_NAME": "from-env", "OTEL_TRACES_SAMPLER": "always_off"})
    )
    try:
        assert provider.resource.attributes["service.name"] == "from-env"
        assert provider.sampler.get_description() == "AlwaysOffSampler"
    finally:
        provider.shutdown()


def test_the_start_up_log_shows_no_credentials() -> None:
    chosen = plan(TracingSettings(enabled=True, endpoint="https://user:pw-SECRET@collector:4318"), {})
    described = chosen.describe()
    assert described["endpoint"] == "https://collector:4318"
    assert "SECRET" not in str(described)
    assert described["sampler"] == "parent-based, ratio 1.0"


async def test_the_composition_root_sets_up_a_provider_only_when_tracing_is_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orchestrator.composition import open_tracing
    from orchestrator.settings import Settings

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    async with open_tracing(Settings()) as provider:
        assert provider is None
    on = Settings(observability={"tracing": {"enabled": True}})
    async with open_tracing(on) as provider:
        assert isinstance(provider, TracerProvider)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    async with open_tracing(on) as provider:
        assert provider is None
