-- Write side beside the event store (the events table itself is created by the event-store recorder).
-- Credential store: secrets and hot security state that must not live in the immutable log. Rows are
-- written in the same transaction as the events they go with, and deleted on erasure.

CREATE TABLE IF NOT EXISTS service_fingerprints (
    name        text PRIMARY KEY,
    fingerprint text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Key store: one data key per user, wrapped by DATA_ENCRYPTION_KEY (crypto-shredding).
CREATE TABLE IF NOT EXISTS subject_keys (
    user_id     uuid PRIMARY KEY,
    wrapped_key bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS credentials (
    user_id       uuid PRIMARY KEY,
    password_hash text NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS sessions (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL,
    audience     text NOT NULL,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    ended_at     timestamptz,
    end_reason   text,
    generation   integer NOT NULL DEFAULT 0,
    ip_address   text,
    user_agent   text
);
CREATE INDEX IF NOT EXISTS sessions_user_idx ON sessions (user_id, created_at DESC);
CREATE INDEX IF NOT EXISTS sessions_live_idx ON sessions (created_at DESC) WHERE ended_at IS NULL;

-- Every refresh token a session has had (only SHA-256); the current one has generation = sessions.generation.
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash bytea PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    generation integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS refresh_tokens_session_idx ON refresh_tokens (session_id);

-- Lockout counters per canonical email, keyed by the email index id (an HMAC: no email in clear).
CREATE TABLE IF NOT EXISTS login_failures (
    email_key    uuid PRIMARY KEY,
    user_id      uuid,
    failures     integer NOT NULL DEFAULT 0,
    reserved     integer NOT NULL DEFAULT 0,
    reserved_at  timestamptz,
    locked_until timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS login_failures_user_idx ON login_failures (user_id);

-- Email-verification and password-reset tokens (only SHA-256).
CREATE TABLE IF NOT EXISTS link_tokens (
    token_hash    bytea PRIMARY KEY,
    user_id       uuid NOT NULL,
    purpose       text NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz,
    superseded_at timestamptz
);
CREATE INDEX IF NOT EXISTS link_tokens_user_idx ON link_tokens (user_id, purpose);
