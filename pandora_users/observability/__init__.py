"""Metrics, traces and log redaction (SPEC §12)."""
