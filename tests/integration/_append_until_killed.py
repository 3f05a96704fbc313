"""Child process for the crash test: appends 8-event batches from many tasks and reports each
acknowledged append on stdout (flushed) until it is SIGKILLed."""

import asyncio
import sys

from orchestrator.eventstore import NO_STREAM, new_events
from orchestrator.eventstore.embedded import EmbeddedEventStore


async def main(directory: str, tasks: int) -> None:
    store = await EmbeddedEventStore.open(directory)

    async def worker(w: int) -> None:
        n = 0
        while True:
            stream = f"crash-{w}-{n}"
            items = [(f"E{i}", f'{{"w":{w},"n":{n},"i":{i}}}'.encode(), b"{}") for i in range(8)]
            result = await store.append(stream, new_events(stream, NO_STREAM, items), expected=NO_STREAM)
            sys.stdout.write(f"{stream} {result.position.commit}\n")
            sys.stdout.flush()
            n += 1

    print("ready", flush=True)
    await asyncio.gather(*(worker(w) for w in range(tasks)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
