"""The write model: aggregates, their events and rules. Imports only stdlib, msgspec and eventsourcing."""
