"""The application recorder: events and credential-store changes commit in one transaction.

`Application.save(*events, credential_ops=[...])` passes the operations down to `insert_events`. Every
transaction that appends events holds the library's `LOCK TABLE ... IN EXCLUSIVE MODE` from before its first
INSERT until its COMMIT, so positions follow commit order, and NOTIFYs the followers once.

Group commit (the default, issue #8): appends that arrive while another commits queue in a `Combiner`, and one
leader commits them in one transaction, taking the lock first. It tries them together (every append's
credential statements, then one INSERT); if anything fails, it rolls that back to a savepoint and runs each
append under its own savepoint, so a conflict fails its append alone. Statements go through psycopg's
pipeline: a batch costs a few round trips, not a few per append. `SerialRecorder` keeps one transaction per
append, credential statements before the lock, for measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresApplicationRecorder, PostgresDatastore
from loguru import logger
from psycopg import Connection, Cursor, Pipeline
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow
from psycopg_pool import PoolTimeout

from pandora_users.store.group_commit import Combiner, Request, Take, sync, translated

QUERY_CANCELED = "57014"  # statement_timeout (DB_STATEMENT_TIMEOUT) or a cancel request: the connection is fine


def connection_lost(error: BaseException) -> bool:
    """The library's error was caused by a lost connection (a restarted server, a killed backend, a network
    failure): psycopg's error then has no SQLSTATE, or one of class 08 (connection) or 57 (operator
    intervention). A lock or statement timeout, a conflict or a pool timeout is not a lost connection."""
    cause = error.__cause__
    if not isinstance(cause, psycopg.OperationalError | psycopg.InterfaceError) or isinstance(cause, PoolTimeout):
        return False
    state = cause.sqlstate
    return state is None or (state.startswith(("08", "57")) and state != QUERY_CANCELED)


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
        self.send(curs)
        self.check(curs)

    def send(self, curs: Cursor[DictRow]) -> None:
        curs.execute(self.sql.encode(), self.params, prepare=True)

    def check(self, curs: Cursor[DictRow]) -> None:
        if self.missed(curs):
            raise CredentialConflict(self.name)

    def missed(self, curs: Cursor[DictRow]) -> bool:
        """The statement run on `curs` missed its expected row count."""
        return self.expect_rows is not None and curs.rowcount != self.expect_rows


@dataclass(frozen=True)
class Append:
    """What one `insert_events` call asks to commit."""

    events: Sequence[StoredEvent]
    ops: Sequence[CredentialOp]


@dataclass(frozen=True)
class _Sent:
    """One append's statements queued in the pipeline, each on its own cursor so that its result can be read."""

    savepoint: Cursor[DictRow] | None
    ops: list[tuple[CredentialOp, Cursor[DictRow]]]
    insert: Cursor[DictRow]

    def conflict(self) -> CredentialConflict | None:
        """A compare-and-set that ran and missed: the failure reported first, as in the serial path."""
        for op, curs in self.ops:
            if curs.pgresult is None:  # not run: a statement before it failed
                return None
            if op.missed(curs):
                return CredentialConflict(op.name)
        return None

    def marked(self) -> bool:
        """Its savepoint was set, so it can be rolled back alone."""
        return self.savepoint is not None and self.savepoint.pgresult is not None

    def ran(self) -> bool:
        return self.insert.pgresult is not None  # its last statement: results arrive in order, none after an error

    def ids(self) -> list[int]:
        return [row["notification_id"] for row in self.insert.fetchall()]


AppendRequest = Request[Append, Sequence[int]]


class PandoraRecorder(PostgresApplicationRecorder):
    """Appends events with their credential operations; concurrent appends share transactions."""

    group_commit = True
    # At most 64 savepoints a transaction: their subtransaction ids then fit PostgreSQL's per-backend cache,
    # whose overflow would slow every other session's snapshots while the batch commits.
    max_batch = 64
    lost_connection_retries = 2
    # Instrumentation: called after each committed transaction with the number of appends it committed.
    on_commit: Callable[[int], None] | None = None

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events") -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.combiner: Combiner[Append, Sequence[int]] = Combiner(self._commit_batch, self.max_batch)

    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        credential_ops: Sequence[CredentialOp] = (),
        **_: Any,
    ) -> Sequence[int] | None:
        """Commit them; retried (at most `lost_connection_retries` times) when the connection was lost, as the
        library retries its own appends: a database restart then costs a reconnect, not a failed command. Even
        when the lost commit had gone through, a retry writes nothing twice: its version or compare-and-set
        conflicts and it fails like any conflicting append."""
        for retry in range(self.lost_connection_retries + 1):
            try:
                if self.group_commit and stored_events:
                    return self.combiner.submit(Append(stored_events, credential_ops))
                return self._insert_alone(stored_events, credential_ops)
            except (InterfaceError, OperationalError) as exc:
                if retry == self.lost_connection_retries or not connection_lost(exc):
                    raise
                logger.warning("append: database connection lost ({}); retrying on a new connection", exc)
                self.datastore.pool.check()  # usually all are lost (a restart): replace them now, not one by one
        raise AssertionError("unreachable")

    def _insert_alone(self, stored_events: Sequence[StoredEvent], ops: Sequence[CredentialOp]) -> list[int]:
        """One transaction: the credential statements (a failed compare-and-set aborts before the lock), the events."""
        ids: list[int] = []
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            for op in ops:
                op.run(curs)
            if stored_events:
                self._lock_table(curs)
                self._notify_channel(curs)
                self._insert_stored_events(curs, stored_events)
                ids = [row["notification_id"] for row in curs.fetchall()]
        if ids:
            self._committed(1)
        return ids

    def _insert_stored_events(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        """Only the INSERT: the table lock and the NOTIFY are taken once per transaction, before any savepoint."""
        PostgresAggregateRecorder._insert_stored_events(self, curs, stored_events, **kwargs)

    def _commit_batch(self, take: Take[Append, Sequence[int]]) -> None:
        # get_connection() turns psycopg's errors into the library's, as for a lone save.
        with self.datastore.get_connection() as conn:
            batch = take()  # after the pool's ping: what queued meanwhile joins this batch
            with conn.pipeline() as pipeline, conn.transaction():
                try:
                    curs = conn.cursor()
                    self._lock_table(curs)
                    self._notify_channel(curs)
                    if len(batch) == 1:
                        self._append_alone(conn, pipeline, batch[0])
                    elif not self._append_together(conn, pipeline, batch):
                        self._append_each(conn, pipeline, batch)
                except psycopg.Error:
                    sync(pipeline, None)  # read what is still pending, so that the rollback finds a clean pipeline
                    raise
        committed = sum(1 for request in batch if request.error is None)
        if committed:
            self._committed(committed)

    def _committed(self, appends: int) -> None:
        # After the COMMIT: a failing hook must not turn committed appends into failures (their callers retry).
        if self.on_commit is not None:
            try:
                self.on_commit(appends)
            except Exception:  # noqa: BLE001 - logged; the appends stay committed whatever the hook does
                logger.exception("on_commit hook failed")

    def _append_alone(self, conn: Connection[DictRow], pipeline: Pipeline, request: AppendRequest) -> None:
        """A batch of one needs no savepoint: any failure rolls the whole transaction back."""
        sent, error = self._send(conn, pipeline, [request.payload], savepoint=None)
        failure = (sent[0].conflict() if sent else None) or error
        if failure is not None:
            raise failure
        request.succeed(sent[0].ids())

    def _append_together(self, conn: Connection[DictRow], pipeline: Pipeline, batch: list[AppendRequest]) -> bool:
        """The usual case, nothing failing: every append's credential statements, then one INSERT for them all.

        If anything fails it is all rolled back to a savepoint, and False returned: the appends then go one by one.
        """
        mark = conn.cursor()
        mark.execute(b"SAVEPOINT together")
        together = Append(
            [event for request in batch for event in request.payload.events],
            [op for request in batch for op in request.payload.ops],
        )
        sent, error = self._send(conn, pipeline, [together], savepoint=None)
        if error is None and sent[0].conflict() is None:
            ids = sorted(sent[0].ids())  # the rows' order: the sequence gave them their ids in order, under the lock
            for request in batch:
                count = len(request.payload.events)
                request.succeed(ids[:count])
                ids = ids[count:]
            return True
        if error is not None and (conn.broken or mark.pgresult is None):
            raise error  # it failed before the savepoint (the lock), or the connection is lost: fail the batch
        # Released too, so that the appends' savepoints are not nested in it: at most `max_batch` subtransactions.
        # Checked with the first statements that follow.
        conn.cursor().execute(b"ROLLBACK TO SAVEPOINT together")
        conn.cursor().execute(b"RELEASE SAVEPOINT together")
        return False

    def _append_each(self, conn: Connection[DictRow], pipeline: Pipeline, batch: list[AppendRequest]) -> None:
        """Each append under its own savepoint; one that fails is rolled back alone and those after it re-sent."""
        start, undo = 0, b""
        while start < len(batch):
            if undo:
                conn.cursor().execute(undo)
            sent, error = self._send(conn, pipeline, [r.payload for r in batch[start:]], savepoint=start)
            if error is not None and conn.broken:
                raise error
            start, undo = _settle(batch, start, sent, error)
        if undo:  # the last append failed: undo it before COMMIT, which would otherwise roll everything back
            conn.cursor().execute(undo)
            error = sync(pipeline, None)
            if error is not None or conn.info.transaction_status != TransactionStatus.INTRANS:
                raise error or OperationalError("could not roll back a failed append")

    def _send(
        self, conn: Connection[DictRow], pipeline: Pipeline, appends: list[Append], *, savepoint: int | None
    ) -> tuple[list[_Sent], psycopg.Error | None]:
        """Queue each append's statements (after a savepoint `append_<n>`, n counting from `savepoint`), then
        read all their results; the first error, if one failed (then the statements after it did not run)."""
        sent: list[_Sent] = []
        error: psycopg.Error | None = None
        try:
            for index, append in enumerate(appends, savepoint or 0):
                mark = None if savepoint is None else conn.cursor()
                statements = _Sent(mark, [(op, conn.cursor()) for op in append.ops], conn.cursor())
                sent.append(statements)  # before it runs: a failure reported while queueing it is still its own
                if mark is not None:
                    mark.execute(f"SAVEPOINT append_{index}".encode())
                for op, curs in statements.ops:
                    op.send(curs)
                self._insert_stored_events(statements.insert, append.events)
        except psycopg.Error as exc:  # an earlier statement's failure, reported while queueing a later one
            error = exc
        return sent, sync(pipeline, error)


class SerialRecorder(PandoraRecorder):
    """One transaction per append, as before group commit; selected by `postgres_env(..., group_commit=False)`."""

    group_commit = False


def _settle(
    batch: list[AppendRequest], start: int, sent: list[_Sent], error: psycopg.Error | None
) -> tuple[int, bytes]:
    """Settle the appends of a round up to the first that failed; where the next round starts, and its undo."""
    for index, statements in enumerate(sent, start):
        request, conflict = batch[index], statements.conflict()
        if conflict is not None:
            request.fail(conflict)
        elif statements.ran():
            request.succeed(statements.ids())
            continue
        elif error is None or not statements.marked():
            raise error or OperationalError("an append did not run")  # nothing to roll back to: fail the batch
        else:
            request.fail(translated(error))
        return index + 1, f"ROLLBACK TO SAVEPOINT append_{index}".encode()
    if error is not None:
        raise error  # a failure no append can be blamed for (the previous round's undo)
    return len(batch), b""
