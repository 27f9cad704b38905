"""Process-level infrastructure: embedded dev servers."""
