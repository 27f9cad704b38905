"""Command handlers: load, decide, save (events and credential changes in one transaction)."""
