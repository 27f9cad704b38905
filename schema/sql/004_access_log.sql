-- Access log (SPEC §9.3): request-level entries for what is not a state change. Written in batches by the
-- in-process writer; rows past retention_until are deleted by the cleanup job (§9.4). Events are never here.

CREATE TABLE IF NOT EXISTS access_log (
    id               uuid PRIMARY KEY,
    created_at       timestamptz NOT NULL,
    event_type       text NOT NULL,
    category         text NOT NULL CHECK (category IN
                         ('authentication', 'authorization', 'data_access', 'data_modification', 'security',
                          'compliance')),
    severity         text NOT NULL CHECK (severity IN ('info', 'warning', 'high', 'critical')),
    status           text NOT NULL CHECK (status IN ('success', 'failure', 'error')),
    status_code      integer NOT NULL,
    listener         text NOT NULL CHECK (listener IN ('public', 'admin', 'grpc')),
    method           text NOT NULL,
    route            text NOT NULL,
    user_id          uuid,
    actor_type       text NOT NULL CHECK (actor_type IN ('user', 'admin', 'service', 'anonymous')),
    actor_id         text,
    actor_identifier text NOT NULL,
    resource_type    text,
    resource_id      text,
    session_id       uuid,
    ip_address       inet,
    user_agent       text,
    request_id       text,
    trace_id         text,
    failure_reason   text,
    duration_ms      integer NOT NULL,
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    retention_until  timestamptz NOT NULL,
    is_sensitive     boolean NOT NULL
);

-- The admin query filters (time, user, actor, type, request) all sort newest first; (…, id) keeps cursors stable.
CREATE INDEX IF NOT EXISTS access_log_created_idx ON access_log (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS access_log_user_idx ON access_log (user_id, created_at DESC) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS access_log_actor_idx ON access_log (actor_id, created_at DESC) WHERE actor_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS access_log_event_type_idx ON access_log (event_type, created_at DESC);
CREATE INDEX IF NOT EXISTS access_log_request_idx ON access_log (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS access_log_retention_idx ON access_log (retention_until);
