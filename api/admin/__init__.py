"""The admin HTTP listener (ADMIN_PORT): /api/v1/admin, /metrics and the system endpoints."""
