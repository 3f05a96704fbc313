"""The folded states an engine process keeps between deliveries, the revision up to which each saga's
actor has decided what was due (a hint at or below it carries no news), and the trace context its stream
stores."""

from __future__ import annotations

from collections import OrderedDict

from orchestrator.domain.state import SagaState, is_terminal
from orchestrator.observability.tracing import TraceContext


class SagaStateCache:
    """Bounded, least recently used first out. A finished saga keeps only its decided revision (a small
    int): its last events still come back as deliveries, and they must not cost a fold."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._states: OrderedDict[str, tuple[SagaState, int, TraceContext]] = OrderedDict()
        self._finished: OrderedDict[str, int] = OrderedDict()

    def state(self, stream: str) -> SagaState | None:
        entry = self._states.get(stream)
        return entry[0] if entry is not None else None

    def trace(self, stream: str) -> TraceContext:
        entry = self._states.get(stream)
        return entry[2] if entry is not None else TraceContext()

    def decided(self, stream: str) -> int:
        entry = self._states.get(stream)
        if entry is not None:
            return entry[1]
        return self._finished.get(stream, -1)

    def remember(
        self, stream: str, state: SagaState, decided: int, trace: TraceContext | None = None
    ) -> None:
        if is_terminal(state):
            self._states.pop(stream, None)
            self._finished[stream] = decided
            self._finished.move_to_end(stream)
            while len(self._finished) > 4 * self._size:
                self._finished.popitem(last=False)
            return
        self._states[stream] = (state, decided, trace or TraceContext())
        self._states.move_to_end(stream)
        while len(self._states) > self._size:
            self._states.popitem(last=False)

    def forget(self, stream: str) -> None:
        self._states.pop(stream, None)
        self._finished.pop(stream, None)
