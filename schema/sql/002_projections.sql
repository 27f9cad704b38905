-- Read side bookkeeping: where each projection is, and the events it had to park.

CREATE TABLE IF NOT EXISTS projection_positions (
    name       text PRIMARY KEY,
    position   bigint NOT NULL DEFAULT 0,
    -- Bumped when a rebuild swaps the table behind the projection's view: an instance that read the old
    -- epoch fails its compare-and-set and re-reads, so no batch lands in the retired table.
    epoch      bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A poison event: retried, then parked here with its error so the projection can go on.
CREATE TABLE IF NOT EXISTS projection_failures (
    projection  text NOT NULL,
    position    bigint NOT NULL,
    topic       text NOT NULL,
    error       text NOT NULL,
    attempts    integer NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    PRIMARY KEY (projection, position)
);
