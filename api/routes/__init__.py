"""Route handlers of the HTTP listeners, one module per resource."""
