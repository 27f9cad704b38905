"""Process-level infrastructure: embedded dev servers, and the read side's database pool."""
