"""The definition catalogue per tenant: ``t:defs`` (names) and ``t:def:{name}`` (version -> JSON of the
registration time and hash), from the ``SagaDefinitionRegistered`` events of ``sagadef-`` streams."""

from __future__ import annotations

import json
from collections.abc import Sequence

from orchestrator.eventstore import RecordedEvent
from orchestrator.records.streams import DEFINITION_REGISTERED, DEFINITION_STREAM_PREFIX
from projections.projectors.keys import definition_key, definitions_index, dumps, iso, ms
from projections.updates import HSet, Update, ZAdd

__all__ = ["DefinitionCatalogueProjector"]


class DefinitionCatalogueProjector:
    def project(self, event: RecordedEvent) -> Sequence[Update]:
        if not event.stream.startswith(DEFINITION_STREAM_PREFIX) or event.type != DEFINITION_REGISTERED:
            return ()
        try:
            data = json.loads(event.data)
            tenant, name, version = str(data["tenant"]), str(data["name"]), str(data["version"])
        except (ValueError, KeyError, TypeError):
            return ()  # not ours to judge: the command side wrote it; an unreadable one is not listed
        if not (tenant and name and version):
            return ()
        registered = {"registered_at": iso(event.recorded_at), "hash": str(data.get("hash", ""))}
        return [
            HSet(definition_key(tenant, name), {version: dumps(registered)}),
            ZAdd(definitions_index(tenant), name, ms(event.recorded_at)),
        ]
