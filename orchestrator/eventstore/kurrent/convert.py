"""Pure conversions between our value objects and kurrentdbclient's (no IO, so unit-testable)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict

from kurrentdbclient import DEFAULT_EXCLUDE_FILTER
from kurrentdbclient import CaughtUp as ClientCaughtUp
from kurrentdbclient import Checkpoint as ClientCheckpoint
from kurrentdbclient import FellBehind as ClientFellBehind
from kurrentdbclient import NewEvent as ClientNewEvent
from kurrentdbclient import RecordedEvent as ClientRecordedEvent
from kurrentdbclient import StreamState as ClientStreamState
from kurrentdbclient.persistent import ConsumerStrategy as ClientConsumerStrategy
from kurrentdbclient.persistent import SubscriptionInfo as ClientSubscriptionInfo

from orchestrator.eventstore.ids import event_id
from orchestrator.eventstore.types import (
    CaughtUp,
    Checkpoint,
    ConsumerStrategy,
    EventFilter,
    Expected,
    NackAction,
    NewEvent,
    PersistentSubscriptionSettings,
    Position,
    RecordedEvent,
    StreamState,
    SubscriptionInfo,
    SubscriptionItem,
)

_JSON = "application/json"
_BINARY = "application/octet-stream"
#: what ``recorded_at`` becomes if the server ever omits the "created" timestamp (it always sends it)
_UNKNOWN_TIME = datetime.fromtimestamp(0, UTC)

_STREAM_STATES = {
    StreamState.NO_STREAM: ClientStreamState.NO_STREAM,
    StreamState.EXISTS: ClientStreamState.EXISTS,
    StreamState.ANY: ClientStreamState.ANY,
}

_STRATEGIES: dict[ConsumerStrategy, ClientConsumerStrategy] = {
    ConsumerStrategy.DISPATCH_TO_SINGLE: "DispatchToSingle",
    ConsumerStrategy.ROUND_ROBIN: "RoundRobin",
    ConsumerStrategy.PINNED: "Pinned",
}

_NACK_ACTIONS: dict[NackAction, Literal["retry", "park", "skip"]] = {
    NackAction.RETRY: "retry",
    NackAction.PARK: "park",
    NackAction.SKIP: "skip",
}

_ALL_POSITION = re.compile(r"C:(-?\d+)")


# --- appends ---------------------------------------------------------------------------------------


def to_client_expected(expected: Expected) -> int | ClientStreamState:
    if isinstance(expected, StreamState):
        return _STREAM_STATES[expected]
    if expected < 0:
        # The client would only assert; an exact revision is a stream index, so this is a caller bug.
        raise ValueError(f"expected revision must be >= 0 or a StreamState, got {expected}")
    return expected


def to_client_event(event: NewEvent) -> ClientNewEvent:
    # The server keeps only "is JSON or not" and reads every other content type back as octet-stream,
    # so sending that is no loss, and it keeps the client's Literal type honest.
    content_type: Literal["application/json", "application/octet-stream"] = (
        "application/json" if event.content_type == _JSON else "application/octet-stream"
    )
    return ClientNewEvent(
        type=event.type,
        data=event.data,
        metadata=event.metadata,
        content_type=content_type,
        id=event.id,
    )


def append_size(events: Sequence[NewEvent]) -> int:
    return sum(e.size for e in events)


def metadata_event(stream: str, metadata: Mapping[str, Any], expected: Expected) -> ClientNewEvent:
    """The ``$metadata`` event for ``$$stream``, with a deterministic id so a resend is idempotent
    (the client's own ``set_stream_metadata`` uses a random id)."""
    data = json.dumps(dict(metadata), sort_keys=True, separators=(",", ":")).encode()
    return ClientNewEvent(
        type="$metadata",
        data=data,
        content_type="application/json",
        id=event_id(f"$${stream}", expected, 0, "$metadata", data, b""),
    )


# --- reads -----------------------------------------------------------------------------------------


def from_client_event(event: ClientRecordedEvent) -> RecordedEvent:
    return RecordedEvent(
        id=event.id,
        type=event.type,
        data=event.data,
        metadata=event.metadata,
        stream=event.stream_name,
        revision=event.stream_position,
        position=Position(event.commit_position),
        recorded_at=event.recorded_at or _UNKNOWN_TIME,
        content_type=event.content_type or _BINARY,
        retry_count=event.retry_count or 0,
    )


def visible(event: ClientRecordedEvent, filter: EventFilter | None) -> bool:
    """Re-apply our filter client-side: the server's regex dialect (.NET) and its handling of system
    events differ in corners from :meth:`EventFilter.matches`, which is the contract."""
    if filter is None:
        return not (event.type.startswith("$") or event.stream_name.startswith("$"))
    return filter.matches(event.stream_name, event.type)


def map_subscription_item(item: ClientRecordedEvent, filter: EventFilter | None) -> SubscriptionItem | None:
    """A catch-up subscription's item in our terms, or ``None`` for what the consumer must not see."""
    if isinstance(item, ClientCheckpoint):
        return Checkpoint(Position(item.commit_position))
    if isinstance(item, ClientCaughtUp):
        # The caught-up message's position is not documented as "last delivered", and a consumer
        # might store it; an unknown position is the safe answer.
        return CaughtUp()
    if isinstance(item, ClientFellBehind) or not visible(item, filter):
        return None
    return from_client_event(item)


class AllFilterKwargs(TypedDict):
    filter_exclude: Sequence[str]
    filter_include: Sequence[str]
    filter_by_stream_name: bool
    filter_by_prefix: bool


def _type_regex(regex: str) -> str:
    # The client wraps the expression as ^...$ (a full match); EventFilter uses re.match (a prefix match).
    return f"(?:{regex}).*"


def all_filter_kwargs(filter: EventFilter | None) -> AllFilterKwargs:
    """Filter arguments for ``read_all`` / ``subscribe_to_all``. Always a filter, never none: the
    server sends checkpoints only on filtered subscriptions, and system events stay out."""
    if filter is not None and filter.stream_prefixes:
        return AllFilterKwargs(
            filter_exclude=(),
            filter_include=filter.stream_prefixes,
            filter_by_stream_name=True,
            filter_by_prefix=True,
        )
    if filter is not None and filter.event_type_regex is not None:
        return AllFilterKwargs(
            filter_exclude=(),
            filter_include=(_type_regex(filter.event_type_regex),),
            filter_by_stream_name=False,
            filter_by_prefix=False,
        )
    return AllFilterKwargs(
        filter_exclude=DEFAULT_EXCLUDE_FILTER,
        filter_include=(),
        filter_by_stream_name=False,
        filter_by_prefix=False,
    )


class PersistentFilterKwargs(TypedDict):
    filter_exclude: Sequence[str]
    filter_include: Sequence[str]
    filter_by_stream_name: bool


def persistent_filter_kwargs(filter: EventFilter | None) -> PersistentFilterKwargs:
    """Filter arguments for ``create_subscription_to_all``: this client sends only regexes for
    persistent subscriptions (no prefix filter), so prefixes become one anchored alternation."""
    if filter is not None and filter.stream_prefixes:
        alternation = "|".join(re.escape(p) for p in filter.stream_prefixes)
        return PersistentFilterKwargs(
            filter_exclude=(), filter_include=(f"(?:{alternation}).*",), filter_by_stream_name=True
        )
    if filter is not None and filter.event_type_regex is not None:
        return PersistentFilterKwargs(
            filter_exclude=(),
            filter_include=(_type_regex(filter.event_type_regex),),
            filter_by_stream_name=False,
        )
    return PersistentFilterKwargs(
        filter_exclude=DEFAULT_EXCLUDE_FILTER, filter_include=(), filter_by_stream_name=False
    )


# --- persistent subscriptions ----------------------------------------------------------------------


class SettingsKwargs(TypedDict):
    consumer_strategy: ClientConsumerStrategy
    message_timeout: float
    max_retry_count: int
    min_checkpoint_count: int
    max_checkpoint_count: int
    checkpoint_after: float
    max_subscriber_count: int
    live_buffer_size: int
    read_batch_size: int
    history_buffer_size: int
    extra_statistics: bool


def settings_kwargs(settings: PersistentSubscriptionSettings) -> SettingsKwargs:
    # Every field is passed: the client's defaults differ from the server's (max_subscriber_count 5).
    return SettingsKwargs(
        consumer_strategy=strategy_name(settings.strategy),
        message_timeout=settings.message_timeout,
        max_retry_count=settings.max_retry_count,
        min_checkpoint_count=settings.min_checkpoint_count,
        max_checkpoint_count=settings.max_checkpoint_count,
        checkpoint_after=settings.checkpoint_after,
        max_subscriber_count=settings.max_subscriber_count,
        live_buffer_size=settings.live_buffer_size,
        read_batch_size=settings.read_batch_size,
        history_buffer_size=settings.history_buffer_size,
        extra_statistics=settings.extra_statistics,
    )


def strategy_name(strategy: ConsumerStrategy) -> ClientConsumerStrategy:
    return _STRATEGIES[strategy]


def nack_action(action: NackAction) -> Literal["retry", "park", "skip"]:
    return _NACK_ACTIONS[action]


def settings_from_info(info: ClientSubscriptionInfo) -> PersistentSubscriptionSettings:
    # PinnedByCorrelation (created by other tools) is the closest thing to Pinned that we can name.
    strategy = ConsumerStrategy.PINNED
    for ours, theirs in _STRATEGIES.items():
        if theirs == info.consumer_strategy:
            strategy = ours
    return PersistentSubscriptionSettings(
        strategy=strategy,
        message_timeout=info.message_timeout,
        max_retry_count=info.max_retry_count,
        checkpoint_after=info.checkpoint_after,
        min_checkpoint_count=info.min_checkpoint_count,
        max_checkpoint_count=info.max_checkpoint_count,
        max_subscriber_count=info.max_subscriber_count,
        live_buffer_size=info.live_buffer_size,
        read_batch_size=info.read_batch_size,
        history_buffer_size=info.history_buffer_size,
        extra_statistics=info.extra_statistics,
    )


def parse_all_position(text: str) -> int | None:
    """The commit position in the server's "C:<commit>/P:<prepare>" notation; ``None`` for none."""
    match = _ALL_POSITION.search(text)
    if match is None:
        return None
    commit = int(match.group(1))
    return commit if commit >= 0 else None


def info_from_client(info: ClientSubscriptionInfo, filter: EventFilter) -> SubscriptionInfo:
    checkpoint = parse_all_position(info.last_checkpointed_event_position)
    return SubscriptionInfo(
        group=info.group_name,
        filter=filter,
        settings=settings_from_info(info),
        checkpoint=Position(checkpoint) if checkpoint is not None else None,
        in_flight=info.total_in_flight_messages,
        parked=info.parked_message_count,
        connections=len(info.connections),
        status=info.status,
    )


# The server does not report a group's filter, so the adapter keeps it as metadata of a stream of
# its own; a metadata event is a system event, invisible to every reader of $all.
FILTER_KEY = "orchestrator.filter"


def filter_record_stream(group: str) -> str:
    return f"orchestrator-psub-{group}"


def filter_record(filter: EventFilter | None) -> dict[str, Any]:
    return {FILTER_KEY: (filter or EventFilter()).to_json()}


def filter_from_record(metadata: Mapping[str, Any]) -> EventFilter:
    """The recorded filter; groups created by other tools have none and read as unfiltered."""
    value = metadata.get(FILTER_KEY)
    return EventFilter.from_json(value) if isinstance(value, Mapping) else EventFilter()
