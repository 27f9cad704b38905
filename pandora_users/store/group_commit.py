"""Group commit: appends that arrive while a transaction commits share the next transaction.

A leader/follower combiner. A caller queues its request; if nobody is committing, it becomes the leader and
runs `commit(take)` on its own thread, where `take()` hands over the requests queued by then (at most
`max_batch`). The leader settles each of them, then passes leadership to the oldest request still queued,
whose caller commits the next batch. Nobody waits on purpose: a batch is whatever queued while the previous
one was being committed, so a request that finds nobody committing is committed at once, alone.

Also two helpers for the leader's transaction, which runs in a psycopg pipeline: `sync` and `translated`.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar, cast

import psycopg
from eventsourcing.persistence import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
)
from psycopg import Pipeline

P = TypeVar("P")  # what a caller asks to have committed
R = TypeVar("R")  # what it gets back


class Request(Generic[P, R]):
    """One caller's request and, once settled, its outcome: a result or an exception."""

    __slots__ = ("error", "payload", "result", "settled", "wake")

    def __init__(self, payload: P) -> None:
        self.payload = payload
        self.result: R | None = None
        self.error: BaseException | None = None
        self.settled = False
        # A latch the waiting caller blocks on, released once: settled, or promoted to leader. A bare lock is
        # much cheaper to wake than an Event, which matters with hundreds of wake-ups a second.
        self.wake = threading.Lock()
        self.wake.acquire()

    def succeed(self, result: R) -> None:
        self.result, self.error = result, None

    def fail(self, error: BaseException) -> None:
        self.result, self.error = None, error

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return cast("R", self.result)


Take = Callable[[], list[Request[P, R]]]


class Combiner(Generic[P, R]):
    """Coalesces concurrent `submit()` calls into batches committed one at a time by `commit(take)`.

    `commit` must call `take()` once, then `succeed` or `fail` every request it returned; an exception it
    raises fails every request of the batch that has not failed on its own.
    """

    def __init__(self, commit: Callable[[Take[P, R]], None], max_batch: int) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._mutex = threading.Lock()
        self._queue: deque[Request[P, R]] = deque()
        self._leading = False
        self._unsettled = 0

    def waiting(self) -> int:
        """Requests submitted and not yet settled, queued or being committed (an instrumentation read)."""
        with self._mutex:
            return self._unsettled

    def submit(self, payload: P) -> R:
        """Commit `payload` in the next batch; its result, or the exception of its failure."""
        request: Request[P, R] = Request(payload)
        with self._mutex:
            self._queue.append(request)
            self._unsettled += 1
            follower, self._leading = self._leading, True
        if follower:
            request.wake.acquire()
        if not request.settled:  # it was promoted: it is the oldest queued request, so it is in the next batch
            self._lead(request)
        return request.outcome()

    def _lead(self, own: Request[P, R]) -> None:
        taken: list[Request[P, R]] = []

        def take() -> list[Request[P, R]]:
            with self._mutex:
                while self._queue and len(taken) < self._max_batch:
                    taken.append(self._queue.popleft())
            return list(taken)

        try:
            self._commit(take)
        except BaseException as exc:  # noqa: BLE001 - not swallowed: every waiter of the batch raises it
            # Also when no connection could be had: the requests queued behind would meet the same failure.
            for request in taken or take():
                if request.error is None:
                    request.fail(exc if request is own else _private_copy(exc))
        finally:
            self._pass_leadership(len(taken))
            for request in taken:
                request.settled = True
                if request is not own:  # the leader is not waiting (and a promoted one was released already)
                    request.wake.release()

    def _pass_leadership(self, settled: int) -> None:
        with self._mutex:
            self._unsettled -= settled
            if self._queue:
                self._queue[0].wake.release()
            else:
                self._leading = False


def _private_copy(exc: BaseException) -> BaseException:
    """A copy for another thread to raise, chained to the original: threads never share a traceback."""
    try:
        clone = copy.copy(exc)
    except Exception:  # noqa: BLE001 - a type that cannot be rebuilt from its args: share the original
        return exc
    clone.__cause__ = exc
    return clone


def sync(pipeline: Pipeline, error: psycopg.Error | None) -> psycopg.Error | None:
    """Read every pending result of a psycopg pipeline; the first error seen (later ones only say 'aborted')."""
    for _ in range(3):
        try:
            pipeline.sync()
        except psycopg.Error as exc:
            error = error or exc
        else:
            return error
    return error


_TRANSLATIONS: tuple[tuple[type[psycopg.Error], type[PersistenceError]], ...] = (
    (psycopg.InterfaceError, InterfaceError),
    (psycopg.OperationalError, OperationalError),
    (psycopg.DataError, DataError),
    (psycopg.IntegrityError, IntegrityError),
    (psycopg.InternalError, InternalError),
    (psycopg.ProgrammingError, ProgrammingError),
    (psycopg.NotSupportedError, NotSupportedError),
    (psycopg.DatabaseError, DatabaseError),
)


def translated(error: psycopg.Error) -> PersistenceError:
    """The library's exception for `error`, as `datastore.get_connection()` raises it for a lone save."""
    kind = next((ours for theirs, ours in _TRANSLATIONS if isinstance(error, theirs)), PersistenceError)
    result = kind(str(error))
    result.__cause__ = error
    return result
