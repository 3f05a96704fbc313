"""KurrentDB / EventStoreDB adapter of the event store port, over ``kurrentdbclient`` 1.3.x (asyncio).

Minimum server: **EventStoreDB 23.10, or KurrentDB 24.10 and later** (the client is tested against
EventStoreDB 23.10 and 24.10 and KurrentDB 25.0 to 26.2). Older servers lack what the port relies on:
the caught-up marker of catch-up subscriptions (23.10) and keeping a filtered ``$all`` persistent
subscription's filter across an update (fixed in 23.10, kurrent-io/KurrentDB#3957).

Nothing from ``kurrentdbclient`` or ``grpc`` crosses this package's boundary: values are converted in
``convert`` and every exception is translated in ``translate``.
"""

from orchestrator.eventstore.kurrent.adapter import KurrentEventStore, open_kurrent_store

__all__ = ["KurrentEventStore", "open_kurrent_store"]
