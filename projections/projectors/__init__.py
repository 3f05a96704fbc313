"""Pure saga projectors, one module per read model (layout in :mod:`projections.projectors.keys`)."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.eventstore import EventFilter
from orchestrator.records.streams import DEFINITION_STREAM_PREFIX, SAGA_STREAM_PREFIX
from projections.projectors.counters import CountersProjector
from projections.projectors.definitions import DefinitionCatalogueProjector
from projections.projectors.dlq import DlqProjector
from projections.projectors.saga_detail import DEFAULT_RETENTION, SagaDetailProjector
from projections.projectors.saga_lists import SagaListsProjector
from projections.updates import Projector

__all__ = ["DEFAULT_RETENTION", "SAGA_FILTER", "saga_projectors"]

#: the streams the saga read models follow (a server-side filter: other events never leave the store)
SAGA_FILTER = EventFilter(stream_prefixes=(SAGA_STREAM_PREFIX, DEFINITION_STREAM_PREFIX))


def saga_projectors(retention: timedelta = DEFAULT_RETENTION) -> list[Projector]:
    """Every saga read model, in the order their updates must apply: the detail document first (the list
    and DLQ moves read and write its ``phase`` / ``pause`` fields)."""
    return [
        SagaDetailProjector(retention),
        SagaListsProjector(retention),
        DlqProjector(),
        CountersProjector(),
        DefinitionCatalogueProjector(),
    ]
