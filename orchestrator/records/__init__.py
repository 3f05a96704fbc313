"""How sagas are recorded in the event store: stream names (``streams``) and the codec between domain
events and store events (``codec``)."""
