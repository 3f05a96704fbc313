"""The KurrentDB adapter's exception translation and value conversions, without a server.

The client's exception and value classes are constructed directly; the few adapter paths that hold
logic of their own (read_all paging, the persistent consumer's skipping, subscription endings) run
against small fakes of the client objects they call.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from kurrentdbclient import DEFAULT_EXCLUDE_FILTER
from kurrentdbclient import CaughtUp as ClientCaughtUp
from kurrentdbclient import Checkpoint as ClientCheckpoint
from kurrentdbclient import FellBehind as ClientFellBehind
from kurrentdbclient import NewEvent as ClientNewEvent
from kurrentdbclient import RecordedEvent as ClientRecordedEvent
from kurrentdbclient import StreamState as ClientStreamState
from kurrentdbclient import exceptions as kx
from kurrentdbclient.common import construct_filter_include_regex
from kurrentdbclient.persistent import ConnectionInfo
from kurrentdbclient.persistent import SubscriptionInfo as ClientSubscriptionInfo

import orchestrator.eventstore.kurrent as kurrent_pkg
from orchestrator.eventstore import (
    ANY,
    EXISTS,
    MAX_APPEND_SIZE,
    NO_STREAM,
    AppendTooLarge,
    CaughtUp,
    Checkpoint,
    ConsumerStrategy,
    EventFilter,
    EventStoreError,
    IntegrityError,
    MaxSubscribersReached,
    NackAction,
    NewEvent,
    OperationalError,
    PersistentSubscriptionSettings,
    Position,
    RecordedEvent,
    StoreClosed,
    StreamDeleted,
    StreamNotFound,
    StreamState,
    SubscriptionDropped,
    SubscriptionExists,
    SubscriptionNotFound,
    WrongExpectedRevision,
)
from orchestrator.eventstore.kurrent import KurrentEventStore, convert
from orchestrator.eventstore.kurrent.adapter import _take_batch
from orchestrator.eventstore.kurrent.subscriptions import (
    KurrentAllSubscription,
    KurrentPersistentSubscription,
    KurrentStreamSubscription,
)
from orchestrator.eventstore.kurrent.translate import translate, translated

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def client_event(
    commit: int,
    *,
    stream: str = "orders-1",
    type: str = "OrderPlaced",
    revision: int = 0,
    retry_count: int | None = None,
    recorded_at: datetime | None = T0,
) -> ClientRecordedEvent:
    return ClientRecordedEvent(
        type=type,
        data=b'{"n":1}',
        metadata=b'{"m":2}',
        content_type="application/json",
        id=uuid.UUID(int=commit),
        stream_name=stream,
        stream_position=revision,
        commit_position=commit,
        prepare_position=commit,
        recorded_at=recorded_at,
        retry_count=retry_count,
    )


# --- translate ---------------------------------------------------------------------------------------


def test_wrong_current_version_carries_stream_expected_and_actual() -> None:
    e = kx.WrongCurrentVersionError("x", stream_name="orders-1", actual_version=3, expected_version=1)
    err = translate(e, stream="orders-1", expected=1)
    assert type(err) is WrongExpectedRevision
    assert (err.stream, err.expected, err.actual) == ("orders-1", 1, 3)


@pytest.mark.parametrize("actual", [-1, ClientStreamState.NO_STREAM, None])
def test_wrong_current_version_of_a_missing_stream_has_no_actual(actual: Any) -> None:
    e = kx.WrongCurrentVersionError("x", stream_name="s", actual_version=actual, expected_version=0)
    err = translate(e, stream="s", expected=0)
    assert isinstance(err, WrongExpectedRevision)
    assert err.actual is None


def test_wrong_current_version_without_context_never_exposes_client_sentinels() -> None:
    e = kx.WrongCurrentVersionError(
        "x", stream_name="s", actual_version=4, expected_version=ClientStreamState.NO_STREAM
    )
    err = translate(e)
    assert isinstance(err, WrongExpectedRevision)
    assert err.stream == "s"
    assert err.expected is StreamState.NO_STREAM


@pytest.mark.parametrize(
    "e",
    [kx.StreamIsDeletedError("is deleted"), kx.StreamTombstonedError("gone", stream_name="orders-1")],
)
def test_deleted_streams(e: Exception) -> None:
    err = translate(e, stream="orders-1")
    assert type(err) is StreamDeleted
    assert err.stream == "orders-1"


def test_not_found_depends_on_what_was_asked() -> None:
    group = translate(kx.NotFoundError(), group="g1")
    assert type(group) is SubscriptionNotFound
    assert group.group == "g1"
    stream = translate(kx.NotFoundError(), stream="orders-1")
    assert type(stream) is StreamNotFound
    assert stream.stream == "orders-1"
    # tombstoning with an exact expectation on a missing stream: the expectation failed
    conditional = translate(kx.NotFoundError("x"), stream="orders-1", expected=3)
    assert type(conditional) is WrongExpectedRevision
    assert (conditional.expected, conditional.actual) == (3, None)
    assert type(translate(kx.NotFoundError())) is IntegrityError


def test_already_exists_is_a_subscription_that_exists() -> None:
    err = translate(kx.AlreadyExistsError("x"), group="g1")
    assert type(err) is SubscriptionExists
    assert err.group == "g1"


def test_append_size_errors() -> None:
    err = translate(kx.MaximumAppendSizeExceededError("Max size is 2048"), append_size=5000)
    assert type(err) is AppendTooLarge
    assert (err.size, err.limit) == (5000, 2048)
    unknown = translate(kx.MaximumAppendSizeExceededError())
    assert isinstance(unknown, AppendTooLarge)
    assert unknown.limit == MAX_APPEND_SIZE
    record = kx.RecordMaxSizeExceededError("x", stream_name="s", event_id=uuid.uuid4(), size=9, max_size=8)
    err = translate(record)
    assert isinstance(err, AppendTooLarge)
    assert (err.size, err.limit) == (9, 8)
    err = translate(kx.TransactionMaxSizeExceededError("x", size=11, max_size=10))
    assert isinstance(err, AppendTooLarge)
    assert (err.size, err.limit) == (11, 10)


def test_maximum_subscriptions_reached() -> None:
    err = translate(
        kx.MaximumSubscriptionsReachedError("Maximum subscriptions reached"), group="g", max_subscribers=2
    )
    assert type(err) is MaxSubscribersReached
    assert (err.group, err.limit) == ("g", 2)


TRANSIENT = [
    kx.ServiceUnavailableError("unavailable"),
    kx.SSLError("SSL_ERROR"),
    kx.GrpcDeadlineExceededError("deadline"),
    kx.AppendDeadlineExceededError(),
    kx.DeadlineExceededError(),
    kx.DiscoveryFailedError("no gossip"),
    kx.LeaderNotFoundError(),
    kx.NodeIsNotLeaderError("not leader", host="h", port=1),
    kx.GrpcError("x"),
    kx.InternalError("x"),
    kx.UnknownError(),
    kx.ExceptionThrownByHandlerError("x"),
    kx.AbortedByServerError("x"),
    kx.ConsumerTooSlowError("Consumer too slow"),
    kx.CancelledError("x"),
    kx.SubscriptionConfirmationError("x"),
    kx.FailedPreconditionError("x"),
    kx.OperationFailedError("x"),
    kx.KurrentDBClientError("x"),
    TimeoutError(),
    RuntimeError("anything unforeseen"),
]


@pytest.mark.parametrize("e", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_failures_are_operational_or_a_dropped_subscription(e: Exception) -> None:
    err = translate(e)
    assert isinstance(err, OperationalError)
    assert not isinstance(err, SubscriptionDropped)
    assert type(translate(e, live=True)) is SubscriptionDropped


@pytest.mark.parametrize("e", [kx.CancelledByClientError("x"), kx.ProgrammingError("never established")])
def test_closed_under_the_caller(e: Exception) -> None:
    assert type(translate(e)) is StoreClosed
    assert type(translate(e, live=True)) is SubscriptionDropped


@pytest.mark.parametrize(
    "e",
    [
        kx.AccessDeniedError(),
        kx.UnauthenticatedError("x"),
        kx.BadRequestError("x"),
        kx.InvalidArgumentError("x"),
        # What the client makes of a status it has no class for: the RpcError's text.
        kx.GrpcError('<_InactiveRpcError: status = StatusCode.UNIMPLEMENTED, details = "">'),
    ],
    ids=lambda e: type(e).__name__,
)
def test_refusals_are_neither_conflicts_nor_retryable(e: Exception) -> None:
    err = translate(e)
    assert type(err) is EventStoreError


def test_invalid_commit_position_and_invalid_transaction_are_integrity_errors() -> None:
    assert type(translate(kx.InvalidCommitPositionError("x"))) is IntegrityError
    err = translate(kx.InvalidTransactionError(), stream="s", expected=2)
    assert type(err) is WrongExpectedRevision
    assert (err.stream, err.expected) == ("s", 2)


def test_our_own_errors_pass_through_untouched() -> None:
    err = StreamNotFound("s")
    assert translate(err) is err


def _client_exception_classes() -> list[type[BaseException]]:
    return [
        cls
        for _, cls in inspect.getmembers(kx, inspect.isclass)
        if issubclass(cls, Exception)
        and cls.__module__ == kx.__name__
        and cls is not kx.ExceptionIteratingRequestsError  # deprecated, never raised by 1.3
    ]


@pytest.mark.parametrize("cls", _client_exception_classes(), ids=lambda c: c.__name__)
def test_every_client_exception_becomes_one_of_ours(cls: type[BaseException]) -> None:
    # __new__ skips the keyword-only constructors; attributes the translation reads are set below.
    e = cls.__new__(cls)
    for name, value in {
        "stream_name": "s",
        "actual_version": 1,
        "expected_version": 0,
        "size": 2,
        "max_size": 1,
        "_stream_name": "s",
    }.items():
        with contextlib.suppress(AttributeError):  # read-only properties fall back on what they wrap
            object.__setattr__(e, name, value)
    assert isinstance(translate(e, stream="s"), EventStoreError)


def test_translated_chains_the_original() -> None:
    original = kx.StreamIsDeletedError("is deleted")
    with pytest.raises(StreamDeleted) as info, translated(stream="s"):
        raise original
    assert info.value.__cause__ is original


def test_translated_leaves_iteration_end_ours_and_cancellation_alone() -> None:
    with pytest.raises(StopAsyncIteration), translated():
        raise StopAsyncIteration
    ours = StreamNotFound("s")
    with pytest.raises(StreamNotFound) as info, translated():
        raise ours
    assert info.value is ours
    with pytest.raises(asyncio.CancelledError), translated():
        raise asyncio.CancelledError


def test_package_exports_only_our_names() -> None:
    assert set(kurrent_pkg.__all__) == {"KurrentEventStore", "open_kurrent_store"}
    assert "23.10" in (kurrent_pkg.__doc__ or "")


# --- conversions ---------------------------------------------------------------------------------------


def test_expected_state_mapping() -> None:
    assert convert.to_client_expected(NO_STREAM) is ClientStreamState.NO_STREAM
    assert convert.to_client_expected(EXISTS) is ClientStreamState.EXISTS
    assert convert.to_client_expected(ANY) is ClientStreamState.ANY
    assert convert.to_client_expected(0) == 0
    assert convert.to_client_expected(7) == 7
    with pytest.raises(ValueError, match="expected revision"):
        convert.to_client_expected(-1)


def test_new_event_keeps_id_and_bytes() -> None:
    ours = NewEvent(uuid.uuid4(), "OrderPlaced", b"{}", b'{"c":1}')
    theirs = convert.to_client_event(ours)
    assert isinstance(theirs, ClientNewEvent)
    assert (theirs.id, theirs.type, theirs.data, theirs.metadata, theirs.content_type) == (
        ours.id,
        "OrderPlaced",
        b"{}",
        b'{"c":1}',
        "application/json",
    )


def test_non_json_content_types_are_sent_as_binary() -> None:
    ours = NewEvent(uuid.uuid4(), "Blob", b"\x00", content_type="application/x-protobuf")
    assert convert.to_client_event(ours).content_type == "application/octet-stream"


def test_append_size_sums_event_sizes() -> None:
    events = [NewEvent(uuid.uuid4(), "T", b"12345", b"67"), NewEvent(uuid.uuid4(), "TT", b"", b"")]
    assert convert.append_size(events) == 5 + 2 + 1 + 2


def test_metadata_event_is_deterministic() -> None:
    a = convert.metadata_event("orders-1", {"$maxCount": 10, "owner": "x"}, ANY)
    b = convert.metadata_event("orders-1", {"owner": "x", "$maxCount": 10}, ANY)
    assert a.id == b.id
    assert a.type == "$metadata"
    assert a.data == b'{"$maxCount":10,"owner":"x"}'
    assert (
        convert.metadata_event("orders-1", {"owner": "x"}, 0).id
        != convert.metadata_event("orders-1", {"owner": "x"}, 1).id
    )
    assert (
        convert.metadata_event("orders-2", {"owner": "x"}, ANY).id
        != convert.metadata_event("orders-1", {"owner": "x"}, ANY).id
    )


def test_recorded_event_conversion() -> None:
    ours = convert.from_client_event(client_event(1234, revision=5, retry_count=3))
    assert ours == RecordedEvent(
        id=uuid.UUID(int=1234),
        type="OrderPlaced",
        data=b'{"n":1}',
        metadata=b'{"m":2}',
        stream="orders-1",
        revision=5,
        position=Position(1234),
        recorded_at=T0,
        content_type="application/json",
        retry_count=3,
    )


def test_recorded_event_defaults_when_the_client_omits_fields() -> None:
    ours = convert.from_client_event(client_event(1, recorded_at=None, retry_count=None))
    assert ours.retry_count == 0
    assert ours.recorded_at == datetime.fromtimestamp(0, UTC)


def test_system_events_are_never_visible() -> None:
    assert convert.visible(client_event(1), None)
    assert not convert.visible(client_event(1, type="$metadata", stream="$$orders-1"), None)
    assert not convert.visible(client_event(1, type="$>"), None)
    everything = EventFilter(event_type_regex=".*")
    assert not convert.visible(client_event(1, type="$statsCollected", stream="$stats"), everything)
    assert convert.visible(client_event(1, stream="orders-9"), EventFilter(stream_prefixes=("orders-",)))
    assert not convert.visible(
        client_event(1, stream="payments-9"), EventFilter(stream_prefixes=("orders-",))
    )


def test_subscription_items() -> None:
    assert convert.map_subscription_item(ClientCheckpoint(500, 500, T0), None) == Checkpoint(Position(500))
    assert convert.map_subscription_item(ClientCaughtUp(3, 500, 500, T0), None) == CaughtUp()
    assert convert.map_subscription_item(ClientFellBehind(3, 500, 500, T0), None) is None
    assert convert.map_subscription_item(client_event(7, type="$metadata"), None) is None
    item = convert.map_subscription_item(client_event(7), None)
    assert isinstance(item, RecordedEvent)
    assert item.position == Position(7)


def test_all_filter_without_a_filter_excludes_system_events() -> None:
    expected = {
        "filter_exclude": DEFAULT_EXCLUDE_FILTER,
        "filter_include": (),
        "filter_by_stream_name": False,
        "filter_by_prefix": False,
    }
    assert convert.all_filter_kwargs(None) == expected
    assert convert.all_filter_kwargs(EventFilter()) == expected


def test_all_filter_by_stream_prefixes() -> None:
    assert convert.all_filter_kwargs(EventFilter(stream_prefixes=("orders-", "pay"))) == {
        "filter_exclude": (),
        "filter_include": ("orders-", "pay"),
        "filter_by_stream_name": True,
        "filter_by_prefix": True,
    }


TYPES = ["OrderPlaced", "OrderPlacedV2", "Order", "XOrderPlaced", "PaymentTaken", "Pay"]


@pytest.mark.parametrize("regex", ["Order", "OrderPlaced$", "Order|Pay", "(Order|Payment)[A-Z]"])
def test_type_regex_filters_like_event_filter_once_the_client_anchors_it(regex: str) -> None:
    kwargs = convert.all_filter_kwargs(EventFilter(event_type_regex=regex))
    assert kwargs["filter_by_stream_name"] is False
    assert kwargs["filter_by_prefix"] is False
    server_regex = construct_filter_include_regex(kwargs["filter_include"])
    f = EventFilter(event_type_regex=regex)
    for t in TYPES:
        assert (re.search(server_regex, t) is not None) == f.matches("s", t), t
    persistent = convert.persistent_filter_kwargs(f)
    assert persistent["filter_include"] == kwargs["filter_include"]
    assert persistent["filter_by_stream_name"] is False


def test_persistent_filter_by_prefixes_is_an_escaped_anchored_alternation() -> None:
    f = EventFilter(stream_prefixes=("orders-", "a.b"))
    kwargs = convert.persistent_filter_kwargs(f)
    assert kwargs["filter_by_stream_name"] is True
    server_regex = construct_filter_include_regex(kwargs["filter_include"])
    for stream in ["orders-1", "orders-", "a.b-7", "axb-7", "xorders-1", "$$orders-1", "order-1"]:
        assert (re.search(server_regex, stream) is not None) == f.matches(stream, "T"), stream


def test_persistent_filter_default_excludes_system_events() -> None:
    assert convert.persistent_filter_kwargs(None) == {
        "filter_exclude": DEFAULT_EXCLUDE_FILTER,
        "filter_include": (),
        "filter_by_stream_name": False,
    }


def test_settings_kwargs_pass_every_field() -> None:
    settings = PersistentSubscriptionSettings(
        strategy=ConsumerStrategy.ROUND_ROBIN,
        message_timeout=1.5,
        max_retry_count=3,
        checkpoint_after=0.5,
        min_checkpoint_count=2,
        max_checkpoint_count=4,
        max_subscriber_count=6,
        live_buffer_size=7,
        read_batch_size=8,
        history_buffer_size=9,
        extra_statistics=True,
    )
    assert convert.settings_kwargs(settings) == {
        "consumer_strategy": "RoundRobin",
        "message_timeout": 1.5,
        "max_retry_count": 3,
        "checkpoint_after": 0.5,
        "min_checkpoint_count": 2,
        "max_checkpoint_count": 4,
        "max_subscriber_count": 6,
        "live_buffer_size": 7,
        "read_batch_size": 8,
        "history_buffer_size": 9,
        "extra_statistics": True,
    }
    # the client's own default would be 5 subscribers; the server's (and ours) is unlimited
    assert convert.settings_kwargs(PersistentSubscriptionSettings())["max_subscriber_count"] == 0


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (ConsumerStrategy.DISPATCH_TO_SINGLE, "DispatchToSingle"),
        (ConsumerStrategy.ROUND_ROBIN, "RoundRobin"),
        (ConsumerStrategy.PINNED, "Pinned"),
    ],
)
def test_strategy_names(ours: ConsumerStrategy, theirs: str) -> None:
    assert convert.strategy_name(ours) == theirs


def test_nack_actions() -> None:
    assert [convert.nack_action(a) for a in NackAction] == ["retry", "park", "skip"]


def client_info(**overrides: Any) -> ClientSubscriptionInfo:
    fields: dict[str, Any] = {
        "event_source": "$all",
        "group_name": "g1",
        "status": "Live",
        "average_per_second": 0,
        "total_items": 10,
        "count_since_last_measurement": 0,
        "last_checkpointed_event_position": "C:900/P:900",
        "last_known_event_position": "C:1000/P:1000",
        "resolve_links": False,
        "start_from": "C:0/P:0",
        "message_timeout": 2.5,
        "extra_statistics": False,
        "max_retry_count": 4,
        "live_buffer_size": 11,
        "history_buffer_size": 12,
        "read_batch_size": 13,
        "checkpoint_after": 1.0,
        "min_checkpoint_count": 1,
        "max_checkpoint_count": 5,
        "read_buffer_count": 0,
        "live_buffer_count": 0,
        "retry_buffer_count": 0,
        "total_in_flight_messages": 3,
        "outstanding_messages_count": 0,
        "consumer_strategy": "Pinned",
        "max_subscriber_count": 2,
        "parked_message_count": 6,
        "connections": [
            ConnectionInfo(
                from_="127.0.0.1",
                username="admin",
                average_items_per_second=0,
                total_items=0,
                count_since_last_measurement=0,
                observed_measurements=[],
                available_slots=1,
                in_flight_messages=3,
                connection_name="c",
            )
        ],
    }
    fields.update(overrides)
    return ClientSubscriptionInfo(**fields)


def test_subscription_info_conversion() -> None:
    f = EventFilter(stream_prefixes=("orders-",))
    info = convert.info_from_client(client_info(), f)
    assert info.group == "g1"
    assert info.filter == f
    assert info.settings == PersistentSubscriptionSettings(
        strategy=ConsumerStrategy.PINNED,
        message_timeout=2.5,
        max_retry_count=4,
        checkpoint_after=1.0,
        min_checkpoint_count=1,
        max_checkpoint_count=5,
        max_subscriber_count=2,
        live_buffer_size=11,
        read_batch_size=13,
        history_buffer_size=12,
        extra_statistics=False,
    )
    assert (info.checkpoint, info.in_flight, info.parked, info.connections, info.status) == (
        Position(900),
        3,
        6,
        1,
        "Live",
    )


def test_subscription_info_before_the_first_checkpoint() -> None:
    for text in ["", "C:-1/P:-1"]:
        assert (
            convert.info_from_client(
                client_info(last_checkpointed_event_position=text), EventFilter()
            ).checkpoint
            is None
        )


def test_parse_all_position() -> None:
    assert convert.parse_all_position("C:123/P:120") == 123
    assert convert.parse_all_position("C:-1/P:-1") is None
    assert convert.parse_all_position("") is None


def test_filter_record_round_trip() -> None:
    for f in [EventFilter(), EventFilter(stream_prefixes=("a", "b")), EventFilter(event_type_regex="X.*")]:
        assert convert.filter_from_record(convert.filter_record(f)) == f
    assert convert.filter_from_record({}) == EventFilter()
    assert not convert.filter_record_stream("g1").startswith("$")


# --- read_all paging ---------------------------------------------------------------------------------


def test_take_batch_skips_the_event_at_the_cursor() -> None:
    raw = [client_event(10), client_event(20), client_event(30)]
    batch, cursor = _take_batch(raw, 10, 5, None)
    assert [e.position.commit for e in batch] == [20, 30]
    assert cursor == 30


def test_take_batch_stops_at_want_and_advances_past_hidden_events() -> None:
    raw = [client_event(20, type="$metadata"), client_event(30), client_event(40), client_event(50)]
    batch, cursor = _take_batch(raw, None, 2, None)
    assert [e.position.commit for e in batch] == [30, 40]
    assert cursor == 40
    hidden_only, cursor = _take_batch([client_event(60, stream="$stats")], 40, 2, None)
    assert hidden_only == []
    assert cursor == 60


class _Response:
    def __init__(self, events: Sequence[ClientRecordedEvent]) -> None:
        self._events = list(events)

    def __aiter__(self) -> AsyncIterator[ClientRecordedEvent]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[ClientRecordedEvent]:
        for e in self._events:
            yield e


class _FakeLog:
    """$all as the server reads it: from commit_position inclusive, at most ``limit`` events."""

    def __init__(self, events: Sequence[ClientRecordedEvent]) -> None:
        self.events = list(events)
        self.calls: list[tuple[int | None, int]] = []

    async def read_all(self, *, commit_position: int | None, limit: int, **_: Any) -> _Response:
        self.calls.append((commit_position, limit))
        start = commit_position or 0
        return _Response([e for e in self.events if e.commit_position >= start][:limit])


def _store_over(fake: Any) -> KurrentEventStore:
    store = KurrentEventStore("esdb://localhost:2113?Tls=false")
    store._client = fake
    return store


async def _collect(it: AsyncIterator[Sequence[RecordedEvent]]) -> list[list[int]]:
    return [[e.position.commit for e in batch] async for batch in it]


async def test_read_all_pages_after_the_exclusive_position() -> None:
    log = _FakeLog([client_event(p) for p in (10, 20, 30, 40, 50)])
    store = _store_over(log)
    assert await _collect(store.read_all(after=Position(20), batch_size=2)) == [[30, 40], [50]]
    assert log.calls == [(20, 3), (40, 3)]
    assert await _collect(store.read_all(batch_size=2, limit=3)) == [[10, 20], [30]]
    assert await _collect(store.read_all(after=Position(50))) == []


async def test_read_all_hides_system_events_without_losing_its_place() -> None:
    log = _FakeLog(
        [
            client_event(10),
            client_event(20, type="$metadata", stream="$$x"),
            client_event(30),
            client_event(40),
        ]
    )
    store = _store_over(log)
    assert await _collect(store.read_all(batch_size=2)) == [[10], [30, 40]]


async def test_a_closed_store_refuses_requests() -> None:
    store = KurrentEventStore("esdb://localhost:2113?Tls=false")
    await store.close()  # never connected: nothing to release, and no error
    with pytest.raises(StoreClosed):
        await store.head_position()


# --- subscriptions -----------------------------------------------------------------------------------


class _FakeCatchUp:
    def __init__(self, items: Sequence[ClientRecordedEvent], end: BaseException | None = None) -> None:
        self._items = list(items)
        self._end = end
        self.stopped = False

    async def __anext__(self) -> ClientRecordedEvent:
        if self._items:
            return self._items.pop(0)
        if self._end is not None:
            raise self._end
        raise StopAsyncIteration

    async def stop(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 - the client's signature
        self.stopped = True


async def test_all_subscription_maps_markers_and_hides_system_events() -> None:
    fake = _FakeCatchUp(
        [
            client_event(10),
            client_event(11, type="$metadata"),
            ClientCheckpoint(11, 11, T0),
            ClientCaughtUp(0, 11, 11, T0),
        ],
        end=kx.ServiceUnavailableError("gone"),
    )
    sub = KurrentAllSubscription(fake, filter=None, stream=None)
    items = [await sub.__anext__() for _ in range(3)]
    assert [type(i) for i in items] == [RecordedEvent, Checkpoint, CaughtUp]
    with pytest.raises(SubscriptionDropped) as info:
        await sub.__anext__()
    assert isinstance(info.value.__cause__, kx.ServiceUnavailableError)


async def test_a_subscription_the_server_ends_is_dropped_and_one_we_close_just_ends() -> None:
    sub = KurrentStreamSubscription(_FakeCatchUp([]), filter=None, stream="s")
    with pytest.raises(SubscriptionDropped):
        await sub.__anext__()
    fake = _FakeCatchUp([client_event(1)])
    sub = KurrentStreamSubscription(fake, filter=None, stream="s")
    await sub.close()
    assert fake.stopped
    assert [e async for e in sub] == []


class _FakePersistent(_FakeCatchUp):
    def __init__(self, items: Sequence[ClientRecordedEvent]) -> None:
        super().__init__(items)
        self.answers: list[tuple[uuid.UUID, str]] = []

    async def ack(self, item: uuid.UUID) -> None:
        self.answers.append((item, "ack"))

    async def nack(self, item: uuid.UUID, action: str) -> None:
        self.answers.append((item, action))


async def test_persistent_consumer_settles_what_it_does_not_hand_out() -> None:
    fake = _FakePersistent(
        [
            client_event(100),  # the group's start position: the port starts *after* it
            client_event(110, stream="payments-1"),  # outside the filter
            client_event(120, retry_count=2),
        ]
    )
    sub = KurrentPersistentSubscription(
        fake,
        group="g",
        filter=EventFilter(stream_prefixes=("orders-",)),
        start_commit=100,
        stop_timeout=1.0,
    )
    event = await sub.__anext__()
    assert (event.position, event.retry_count) == (Position(120), 2)
    assert fake.answers == [(uuid.UUID(int=100), "ack"), (uuid.UUID(int=110), "ack")]
    await sub.nack(event.id, NackAction.PARK)
    assert fake.answers[-1] == (event.id, "park")
    await sub.close()
    with pytest.raises(SubscriptionDropped):
        await sub.ack(event.id)
    with pytest.raises(StopAsyncIteration):
        await sub.__anext__()
