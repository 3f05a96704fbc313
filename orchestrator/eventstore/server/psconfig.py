"""A persistent subscription group as the KurrentDB server defines it (no IO): its source (``$all`` or one
stream), start, filter, strategy name and settings; how it maps onto an embedded-store group; and its
JSON form in ``$persistentSubscriptionConfig`` (PersistentSubscriptionService.SaveConfiguration).

The embedded store's groups read ``$all`` with an :class:`EventFilter` (stream prefixes or an event-type
regex, system events never). A server group selects more precisely (stream-name regexes, exclusions, one
stream from a revision), so the embedded group is given the narrowest filter that lets through at least
what the server's would, and :meth:`GroupConfig.accepts` decides each delivery exactly; the servicer acks
what it does not accept, so it counts as done for the group's checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.eventstore.types import (
    ConsumerStrategy,
    EventFilter,
    PersistentSubscriptionSettings,
    RecordedEvent,
)

ALL = "$all"
#: SystemStreams.PersistentSubscriptionConfig / SystemEventTypes.PersistentSubscriptionConfig (SystemNames.cs)
CONFIG_STREAM = "$persistentSubscriptionConfig"
CONFIG_TYPE = "$PersistentConfig"

#: the strategies the server knows (PersistentSubscriptionConsumerStrategyRegistry); PinnedByCorrelation
#: is served as Pinned (by stream name): the embedded store has no correlation-id strategy
STRATEGIES: Mapping[str, ConsumerStrategy] = {
    "DispatchToSingle": ConsumerStrategy.DISPATCH_TO_SINGLE,
    "RoundRobin": ConsumerStrategy.ROUND_ROBIN,
    "Pinned": ConsumerStrategy.PINNED,
    "PinnedByCorrelation": ConsumerStrategy.PINNED,
}


class GroupFailed(Exception):
    """The server refuses the group's definition (CreatePersistentSubscription*Result.Fail): answered
    INTERNAL "Subscription group ... failed: '<reason>'" (RpcExceptions.PersistentSubscriptionFailed)."""


def group_key(stream: str, group: str) -> str:
    # PersistentSubscriptionService.BuildSubscriptionGroupKey; also the confirmation's subscription id,
    # which the client splits at "::" to check the stream and group it asked for.
    return f"{stream}::{group}"


@dataclass(frozen=True, slots=True)
class Selector:
    """A $all group's filter as the server applies it (EventFilter.StreamName/EventType.Regex|Prefixes):
    a regex is searched (.NET Regex.IsMatch), prefixes are matched at the start."""

    on_stream: bool
    regex: str | None = None
    prefixes: tuple[str, ...] = ()

    def matcher(self) -> Callable[[str], bool]:
        if self.regex is not None:
            pattern = re.compile(self.regex)
            return lambda text: pattern.search(text) is not None
        prefixes = self.prefixes
        return lambda text: text.startswith(prefixes)

    def embedded(self) -> EventFilter:
        """An embedded filter letting through at least what this one does (and no system event)."""
        if self.prefixes:
            return EventFilter(stream_prefixes=self.prefixes) if self.on_stream else EventFilter()
        assert self.regex is not None
        if not self.on_stream:
            # The embedded store matches at the start (re.match); a lazy lead makes that a search.
            return EventFilter(event_type_regex=f"(?s:.*?)(?:{self.regex})")
        literal = _literal_prefixes(self.regex)
        return EventFilter(stream_prefixes=literal) if literal else EventFilter()


#: the include regex the client builds from alternated prefixes: ``^(?:p1|p2).*$`` (the adapter's shape)
_PREFIX_ALTERNATION = re.compile(r"\^\(\?:(?P<body>.*)\)\.\*\$")


def _literal_prefixes(regex: str) -> tuple[str, ...]:
    match = _PREFIX_ALTERNATION.fullmatch(regex)
    if match is None:
        return ()
    parts = re.split(r"(?<!\\)\|", match.group("body"))
    prefixes = tuple(re.sub(r"\\(.)", r"\1", p) for p in parts)
    # Only when each part is exactly an escaped literal is the alternation a set of prefixes.
    if not all(prefixes) or any(re.escape(p) != raw for p, raw in zip(prefixes, parts, strict=True)):
        return ()
    return prefixes


@dataclass(frozen=True, slots=True)
class GroupConfig:
    stream: str
    group: str
    #: $all: the commit position delivery starts *at* (0 start, -1 end); a stream: the revision (-1 end)
    start: int
    #: a stream group: the first revision it delivers (``start``, with "end" resolved at creation)
    first_revision: int = 0
    strategy: str = "DispatchToSingle"
    settings: PersistentSubscriptionSettings = field(default_factory=PersistentSubscriptionSettings)
    selector: Selector | None = None
    resolve_links: bool = False

    @property
    def key(self) -> str:
        return group_key(self.stream, self.group)

    @property
    def is_all(self) -> bool:
        return self.stream == ALL

    def start_from(self) -> str:
        # PersistentSubscriptionAllStreamPosition.ToString "C:<commit>/P:<prepare>"; a stream's is its
        # event number. The client parses both back (SubscriptionInfo.update_*_kwargs).
        return f"C:{self.start}/P:{self.start}" if self.is_all else str(self.start)

    def embedded_filter(self) -> EventFilter:
        if not self.is_all:
            return EventFilter(stream_prefixes=(self.stream,))
        return self.selector.embedded() if self.selector is not None else EventFilter()

    def acceptor(self) -> Callable[[RecordedEvent], bool]:
        """Whether the server's group would deliver an event the embedded group delivered."""
        if not self.is_all:
            stream, first = self.stream, self.first_revision
            return lambda e: e.stream == stream and e.revision >= first
        if self.selector is None:
            return lambda _e: True
        match = self.selector.matcher()
        if self.selector.on_stream:
            return lambda e: match(e.stream)
        return lambda e: match(e.type)

    def to_json(self) -> dict[str, Any]:
        settings = asdict(self.settings)
        settings["strategy"] = self.settings.strategy.value
        selector = None if self.selector is None else asdict(self.selector)
        return {
            "stream": self.stream,
            "group": self.group,
            "start": self.start,
            "first_revision": self.first_revision,
            "strategy": self.strategy,
            "settings": settings,
            "selector": selector,
            "resolve_links": self.resolve_links,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> GroupConfig:
        settings = dict(value["settings"])
        settings["strategy"] = ConsumerStrategy(settings["strategy"])
        raw = value.get("selector")
        selector = None
        if raw is not None:
            selector = Selector(raw["on_stream"], raw.get("regex"), tuple(raw.get("prefixes", ())))
        return cls(
            stream=value["stream"],
            group=value["group"],
            start=int(value["start"]),
            first_revision=int(value.get("first_revision", 0)),
            strategy=value["strategy"],
            settings=PersistentSubscriptionSettings(**settings),
            selector=selector,
            resolve_links=bool(value.get("resolve_links", False)),
        )


def settings_of(strategy: str, values: Mapping[str, Any]) -> PersistentSubscriptionSettings:
    """Validated settings from a Create/Update request's values (durations in seconds), with the
    server's checks: a known strategy, and ReadBatchSize below BufferSize (PersistentSubscription ctor)."""
    if strategy not in STRATEGIES:
        raise GroupFailed(f"Consumer strategy {strategy} does not exist.")
    if values["read_batch_size"] >= values["history_buffer_size"]:
        raise GroupFailed("ReadBatchSize may not be greater than or equal to BufferSize")
    try:
        return PersistentSubscriptionSettings(strategy=STRATEGIES[strategy], **values)
    except ValueError as e:
        # Limits of the embedded store the server may not have (e.g. a zero message timeout).
        raise GroupFailed(str(e)) from e
