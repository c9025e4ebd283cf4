"""Persistence adapters: the event store (eventsourcing) and the read-model database."""
