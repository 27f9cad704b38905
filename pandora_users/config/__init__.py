"""Settings: environment variables, APP_ENV profiles, Vault overlay, start-up validation."""
