"""Read side: projector workers, read models and the Redis Streams forwarder."""
