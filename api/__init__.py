"""HTTP edge (Litestar): the public listener and, later, the admin listener."""
