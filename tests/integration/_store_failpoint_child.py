"""Child process for the park-then-crash test. Parks one message (``park``: nack PARK; ``retry``: nack RETRY
past ``max_retry_count=0``) and acks the next, with checkpoints due at once, so the checkpoint would pass
the parked message in the same round. Run with ``SAGA_FAILPOINTS=persistent.after_park=kill@1``, it dies
inside that window. Prints the parked event's id and position, and ``survived`` if it was not killed."""

import asyncio
import sys

from orchestrator.eventstore import NO_STREAM, NackAction, PersistentSubscriptionSettings, new_events
from orchestrator.eventstore.embedded import EmbeddedEventStore

GROUP = "g"
SETTINGS = PersistentSubscriptionSettings(
    max_retry_count=0,
    message_timeout=60.0,
    checkpoint_after=0.0,
    min_checkpoint_count=1,
    max_checkpoint_count=1,
)


async def main(directory: str, how: str) -> None:
    store = await EmbeddedEventStore.open(directory)
    await store.create_subscription(GROUP, settings=SETTINGS)
    items = [("Parked", b"{}", b"{}"), ("Acked", b"{}", b"{}")]
    await store.append("s", new_events("s", NO_STREAM, items), expected=NO_STREAM)
    consumer = await store.read_subscription(GROUP)
    parked = await consumer.__anext__()
    acked = await consumer.__anext__()
    print(parked.id, parked.position.commit, flush=True)
    await consumer.nack(parked.id, NackAction.PARK if how == "park" else NackAction.RETRY)
    await consumer.ack(acked.id)
    for _ in range(1000):  # about 10 s for the checkpoint past the parked message, unless killed first
        info = await store.get_subscription_info(GROUP)
        if info.checkpoint == acked.position:
            break
        await asyncio.sleep(0.01)
    print("survived", info, flush=True)
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
