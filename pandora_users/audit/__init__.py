"""The access log (SPEC §9.3) and its retention job (§9.4). The event store stays the audit trail of state."""
