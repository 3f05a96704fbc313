"""PersistentSubscriptions protobuf messages <-> group definitions and their state (no IO)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from kurrentdbclient.protos.v1 import persistent_pb2

from orchestrator.eventstore.server import convert
from orchestrator.eventstore.server.convert import BadRequest
from orchestrator.eventstore.server.psconfig import ALL, GroupConfig, Selector, settings_of
from orchestrator.eventstore.types import NackAction, RecordedEvent, SubscriptionInfo

#: .NET ticks (100 ns) per millisecond, for the *_ticks variants of the timeouts
_TICKS_PER_MS = 10_000

_NACK = persistent_pb2.ReadReq.Nack
#: NakAction.Unknown retries like Retry; Stop is a no-op on the server (PersistentSubscription
#: .HandleNackedMessage: "StopSubscription() { //TODO CC Stop subscription? }"), so it has no entry here.
NACK_ACTIONS: dict[int, NackAction] = {
    _NACK.Unknown: NackAction.RETRY,
    _NACK.Retry: NackAction.RETRY,
    _NACK.Park: NackAction.PARK,
    _NACK.Skip: NackAction.SKIP,
}


def source(options: Any) -> str:
    """``$all`` or the stream of options whose ``stream_option`` is ``all`` / ``stream_identifier``."""
    which = options.WhichOneof("stream_option")
    if which == "all":
        return ALL
    if which == "stream_identifier":
        return convert.stream_name(options.stream_identifier)
    raise BadRequest("a persistent subscription request needs a stream or $all")


def list_source(option: Any) -> str:
    """The stream of a ListReq.StreamOption, whose oneof members are ``stream`` / ``all``."""
    if option.WhichOneof("stream_option") == "stream":
        return convert.stream_name(option.stream)
    return ALL


def _ms(settings: Any, name: str) -> int:
    which = settings.WhichOneof(name)
    if which == f"{name}_ticks":
        return int(getattr(settings, which)) // _TICKS_PER_MS
    return int(getattr(settings, which)) if which is not None else 0


def _settings_values(settings: Any) -> dict[str, Any]:
    return {
        "message_timeout": _ms(settings, "message_timeout") / 1000.0,
        "checkpoint_after": _ms(settings, "checkpoint_after") / 1000.0,
        "max_retry_count": settings.max_retry_count,
        "min_checkpoint_count": settings.min_checkpoint_count,
        "max_checkpoint_count": settings.max_checkpoint_count,
        "max_subscriber_count": settings.max_subscriber_count,
        "live_buffer_size": settings.live_buffer_size,
        "read_batch_size": settings.read_batch_size,
        "history_buffer_size": settings.history_buffer_size,
        "extra_statistics": settings.extra_statistics,
    }


def _start(options: Any) -> tuple[str, int]:
    """The group's source and start from Create/Update options (``stream`` or ``all``)."""
    which = options.WhichOneof("stream_option")
    if which == "all":
        start = options.all.WhichOneof("all_option")
        if start == "position":
            return ALL, int(options.all.position.commit_position)
        return ALL, -1 if start == "end" else 0
    if which == "stream":
        stream = convert.stream_name(options.stream.stream_identifier)
        revision = options.stream.WhichOneof("revision_option")
        if revision == "revision":
            return stream, int(options.stream.revision)
        return stream, -1 if revision == "end" else 0
    # The deprecated top-level stream_identifier + settings.revision form (Create.cs, "backwards
    # compatibility"); no client this server is tested with sends it.
    raise BadRequest("a persistent subscription needs stream options or $all options")


def _selector(all_options: Any) -> Selector | None:
    if all_options.WhichOneof("filter_option") != "filter":
        return None
    flt = all_options.filter
    which = flt.WhichOneof("filter")
    if which not in ("stream_identifier", "event_type"):
        raise BadRequest("a filter needs a stream identifier or an event type expression")
    expression = getattr(flt, which)
    # Create.cs ConvertToEventFilter: an empty regex means the prefixes.
    if expression.regex:
        return Selector(which == "stream_identifier", regex=expression.regex)
    return Selector(which == "stream_identifier", prefixes=tuple(expression.prefix))


def create_config(request: persistent_pb2.CreateReq) -> GroupConfig:
    options = request.options
    settings = options.settings
    # Create.cs: the string consumer_strategy, else the deprecated enum.
    strategy = settings.consumer_strategy or persistent_pb2.CreateReq.ConsumerStrategy.Name(
        settings.named_consumer_strategy
    )
    stream, start = _start(options)
    return GroupConfig(
        stream=stream,
        group=options.group_name,
        start=start,
        strategy=strategy,
        settings=settings_of(strategy, _settings_values(settings)),
        selector=_selector(options.all) if stream == ALL else None,
        resolve_links=settings.resolve_links,
    )


def update_config(request: persistent_pb2.UpdateReq) -> GroupConfig:
    options = request.options
    settings = options.settings
    # Update.cs: settings.NamedConsumerStrategy.ToString()
    strategy = persistent_pb2.UpdateReq.ConsumerStrategy.Name(settings.named_consumer_strategy)
    stream, start = _start(options)
    return GroupConfig(
        stream=stream,
        group=options.group_name,
        start=start,
        strategy=strategy,
        settings=settings_of(strategy, _settings_values(settings)),
        resolve_links=settings.resolve_links,
    )


def event_id(identifier: Any) -> UUID:
    if identifier.WhichOneof("value") == "structured":
        s = identifier.structured
        raw = (s.most_significant_bits & (2**64 - 1)) << 64 | (s.least_significant_bits & (2**64 - 1))
        return UUID(int=raw)
    return UUID(identifier.string)


def read_event(event: RecordedEvent) -> persistent_pb2.ReadResp:
    recorded = persistent_pb2.ReadResp.ReadEvent.RecordedEvent(**convert.recorded_fields(event))
    return persistent_pb2.ReadResp(
        event=persistent_pb2.ReadResp.ReadEvent(
            event=recorded, commit_position=event.position.commit, retry_count=event.retry_count
        )
    )


def confirmation(subscription_id: str) -> persistent_pb2.ReadResp:
    return persistent_pb2.ReadResp(
        subscription_confirmation=persistent_pb2.ReadResp.SubscriptionConfirmation(
            subscription_id=subscription_id
        )
    )


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """One connected consumer, as SubscriptionInfo.ConnectionInfo reports it."""

    peer: str
    name: str
    buffer_size: int
    in_flight: int
    delivered: int


def subscription_info(
    config: GroupConfig,
    info: SubscriptionInfo,
    connections: list[ConnectionState],
    *,
    checkpoint: str,
    last_known: str,
) -> persistent_pb2.SubscriptionInfo:
    s = config.settings
    message = persistent_pb2.SubscriptionInfo(
        event_source=config.stream,
        group_name=config.group,
        status=info.status,
        total_items=sum(c.delivered for c in connections),
        last_checkpointed_event_position=checkpoint,
        last_known_event_position=last_known,
        resolve_link_tos=config.resolve_links,
        start_from=config.start_from(),
        message_timeout_milliseconds=round(s.message_timeout * 1000),
        extra_statistics=s.extra_statistics,
        max_retry_count=s.max_retry_count,
        live_buffer_size=s.live_buffer_size,
        buffer_size=s.history_buffer_size,
        read_batch_size=s.read_batch_size,
        check_point_after_milliseconds=round(s.checkpoint_after * 1000),
        min_check_point_count=s.min_checkpoint_count,
        max_check_point_count=s.max_checkpoint_count,
        total_in_flight_messages=info.in_flight,
        outstanding_messages_count=info.in_flight,
        named_consumer_strategy=config.strategy,
        max_subscriber_count=s.max_subscriber_count,
        parked_message_count=info.parked,
    )
    for c in connections:
        connection = persistent_pb2.SubscriptionInfo.ConnectionInfo(
            username="anonymous",
            total_items=c.delivered,
            available_slots=max(0, c.buffer_size - c.in_flight),
            in_flight_messages=c.in_flight,
            connection_name=c.name,
        )
        setattr(connection, "from", c.peer)  # a Python keyword as a field name
        message.connections.append(connection)
    return message
