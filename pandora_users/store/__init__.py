"""Persistence of the write side: event store, credential store, key store, migrations."""
