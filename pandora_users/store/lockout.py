"""Account lockout counters (SPEC §7.5), kept in the credential store so every replica shares them.

An attempt is reserved atomically before a password is verified, so parallel guesses cannot run more
verifications than the threshold. A reservation left behind by a crashed process goes stale after
`STALE_RESERVATION` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

STALE_RESERVATION = 30.0

_RESERVE = """
INSERT INTO login_failures AS f (email_key, user_id, failures, reserved, reserved_at, updated_at)
VALUES (%(key)s, %(user_id)s, 0, 1, %(now)s, %(now)s)
ON CONFLICT (email_key) DO UPDATE SET
    failures = CASE WHEN f.locked_until IS NOT NULL AND f.locked_until <= %(now)s THEN 0 ELSE f.failures END,
    locked_until = CASE WHEN f.locked_until <= %(now)s THEN NULL ELSE f.locked_until END,
    reserved = CASE WHEN f.reserved_at < %(stale)s THEN 1 ELSE f.reserved + 1 END,
    reserved_at = %(now)s,
    user_id = COALESCE(EXCLUDED.user_id, f.user_id),
    updated_at = %(now)s
WHERE (f.locked_until IS NULL OR f.locked_until <= %(now)s)
  AND (CASE WHEN f.locked_until IS NOT NULL AND f.locked_until <= %(now)s THEN 0 ELSE f.failures END)
      + (CASE WHEN f.reserved_at < %(stale)s THEN 0 ELSE f.reserved END) < %(threshold)s
RETURNING failures
"""

_LOCKED_UNTIL = "SELECT locked_until FROM login_failures WHERE email_key = %s"

_FAIL = """
UPDATE login_failures SET
    reserved = GREATEST(reserved - 1, 0),
    failures = failures + 1,
    locked_until = CASE WHEN failures + 1 >= %(threshold)s THEN %(until)s ELSE locked_until END,
    updated_at = %(now)s
WHERE email_key = %(key)s
RETURNING failures, locked_until
"""

_RELEASE = "UPDATE login_failures SET reserved = GREATEST(reserved - 1, 0) WHERE email_key = %s"
_CLEAR = "DELETE FROM login_failures WHERE email_key = %s RETURNING failures"


@dataclass(frozen=True)
class Reservation:
    granted: bool
    prior_failures: int = 0
    locked_until: datetime | None = None


@dataclass(frozen=True)
class Failure:
    failures: int
    locked_until: datetime | None  # set when this failure started the lock


class Lockout:
    def __init__(self, datastore: Any, *, threshold: int, duration: float) -> None:
        self.datastore = datastore
        self.threshold = threshold
        self.duration = duration

    def reserve(self, key: UUID, user_id: UUID | None, now: datetime) -> Reservation:
        params = {
            "key": key,
            "user_id": user_id,
            "now": now,
            "stale": now - timedelta(seconds=STALE_RESERVATION),
            "threshold": self.threshold,
        }
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(_RESERVE.encode(), params, prepare=True)
            row = curs.fetchone()
            if row is not None:
                return Reservation(True, prior_failures=row["failures"])
            curs.execute(_LOCKED_UNTIL.encode(), (key,), prepare=True)
            locked = curs.fetchone()
        until = locked["locked_until"] if locked else None
        return Reservation(False, locked_until=until if until and until > now else None)

    def fail(self, key: UUID, now: datetime) -> Failure:
        params = {
            "key": key,
            "now": now,
            "threshold": self.threshold,
            "until": now + timedelta(seconds=self.duration),
        }
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(_FAIL.encode(), params, prepare=True)
            row = curs.fetchone()
        if row is None:
            return Failure(0, None)
        failures = row["failures"]
        started = failures == self.threshold and row["locked_until"] is not None
        return Failure(failures, row["locked_until"] if started else None)

    def release(self, key: UUID) -> None:
        """Give a reservation back without counting it (the attempt ended before a verification)."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(_RELEASE.encode(), (key,), prepare=True)

    def clear(self, key: UUID) -> int:
        """A success resets the counter; returns the failures that preceded it."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(_CLEAR.encode(), (key,), prepare=True)
            row = curs.fetchone()
        return 0 if row is None else int(row["failures"])
