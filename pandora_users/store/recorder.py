"""The application recorder: events and credential-store changes commit in one transaction.

`Application.save(*events, credential_ops=[...])` passes the operations down to `insert_events`, which runs
them first (a failed compare-and-set aborts before the events-table lock is taken), then appends the
events under the library's `LOCK TABLE ... IN EXCLUSIVE MODE` so positions follow commit order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg import Cursor
from psycopg.rows import DictRow


class CredentialConflict(Exception):
    """A credential-store precondition failed inside a command's transaction; nothing was written."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True)
class CredentialOp:
    """One parameterised statement of the credential or key store, run inside the event transaction.

    `expect_rows`, when set, is the exact row count the statement must affect (a compare-and-set);
    otherwise the transaction is rolled back with `CredentialConflict(name)`.
    """

    name: str
    sql: str
    params: tuple[Any, ...] = ()
    expect_rows: int | None = None

    def run(self, curs: Cursor[DictRow]) -> None:
        curs.execute(self.sql.encode(), self.params, prepare=True)
        if self.expect_rows is not None and curs.rowcount != self.expect_rows:
            raise CredentialConflict(self.name)


class PandoraRecorder(PostgresApplicationRecorder):
    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        credential_ops: Sequence[CredentialOp] = (),
        **_: Any,
    ) -> Sequence[int] | None:
        ids: list[int] = []
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            for op in credential_ops:
                op.run(curs)
            if stored_events:
                self._insert_stored_events(curs, stored_events)
                ids = [row["notification_id"] for row in curs.fetchall()]
        return ids
