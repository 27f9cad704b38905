-- Read models (SPEC §1.4): the user directory and the event index. Each lives in a versioned table behind a
-- view of the plain name; projections and queries only use the view, so `pandora-users rebuild` can fill
-- `<name>_vN+1` beside the live table and swap the view in one transaction.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Which physical table is behind each read model's view (maintained by projections/rebuild.py).
CREATE TABLE IF NOT EXISTS read_model_tables (
    name         text PRIMARY KEY,
    active_table text NOT NULL,
    version      integer NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The user directory: one row per registered user, the AdminUserDTO fields plus the last applied position.
-- After erasure `email` is NULL and the names are '[erased]'.
CREATE TABLE IF NOT EXISTS users_v1 (
    id                uuid PRIMARY KEY,
    email             text,
    first_name        text NOT NULL,
    last_name         text NOT NULL,
    role              text NOT NULL,
    kyc_status        text NOT NULL,
    email_verified_at timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    locked_until      timestamptz,
    deleted_at        timestamptz,
    erased_at         timestamptz,
    version           bigint NOT NULL,
    position          bigint NOT NULL
);
-- Admin list, newest first: every user (include_deleted) and live users only (the default).
CREATE INDEX IF NOT EXISTS users_v1_created_idx ON users_v1 (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS users_v1_live_created_idx ON users_v1 (created_at DESC, id DESC)
    WHERE deleted_at IS NULL AND erased_at IS NULL;
CREATE INDEX IF NOT EXISTS users_v1_kyc_created_idx ON users_v1 (kyc_status, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS users_v1_role_created_idx ON users_v1 (role, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS users_v1_email_idx ON users_v1 (email);
-- Case-insensitive substring search (ILIKE '%q%') over email and names, fast at 100,000+ users: one trigram
-- index over the three fields joined, used as a prefilter (the query rechecks each field, so a match across
-- the joins never counts). The expression must stay identical to SEARCH_TEXT in projections/queries/users.py.
CREATE INDEX IF NOT EXISTS users_v1_search_trgm_idx ON users_v1
    USING gin ((coalesce(email, '') || ' ' || first_name || ' ' || last_name) gin_trgm_ops);

-- Created once: after a rebuild the view points at a later version and must stay there.
DO $$ BEGIN
    IF to_regclass('users') IS NULL THEN CREATE VIEW users AS SELECT * FROM users_v1; END IF;
END $$;

-- The event index: one row per published event. No payloads and no personal data: queries decode those
-- from the event store by position, so erasure (a destroyed key) needs no change here.
CREATE TABLE IF NOT EXISTS event_log_v1 (
    position          bigint PRIMARY KEY,
    event_id          uuid NOT NULL,
    event_type        text NOT NULL,
    user_id           uuid NOT NULL,
    aggregate_id      uuid NOT NULL,
    aggregate_version bigint NOT NULL,
    timestamp         timestamptz NOT NULL,
    schema_version    integer NOT NULL,
    actor_id          text
);
CREATE INDEX IF NOT EXISTS event_log_v1_user_idx ON event_log_v1 (user_id, position);
CREATE INDEX IF NOT EXISTS event_log_v1_type_idx ON event_log_v1 (event_type, position);
CREATE INDEX IF NOT EXISTS event_log_v1_actor_idx ON event_log_v1 (actor_id, position);
CREATE INDEX IF NOT EXISTS event_log_v1_timestamp_idx ON event_log_v1 (timestamp, position);

DO $$ BEGIN
    IF to_regclass('event_log') IS NULL THEN CREATE VIEW event_log AS SELECT * FROM event_log_v1; END IF;
END $$;

INSERT INTO read_model_tables (name, active_table, version) VALUES
    ('users', 'users_v1', 1),
    ('event_log', 'event_log_v1', 1)
ON CONFLICT (name) DO NOTHING;
