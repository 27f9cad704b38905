"""Users read-model rows kept in each serving process, current as the users projector's notifications say.

`GET /users/me`, gRPC GetUser and ValidateUser read one row by id, thousands of times a second, and rows change
rarely. The users projector sends, in the transaction of each batch, a NOTIFY on `CHANGED_CHANNEL` with the
batch's last position and the ids whose rows it changed (`projections.users.change_notice`); PostgreSQL delivers
notifications in commit order. So this process knows `through`: the position up to which every change has been
announced to it, and a kept row read at position q is the row as of max(q, `through`) as long as no notice has
named it since.

- A row is kept only if it was read (with the projection's position, in one statement) at a position not below
  `through`: a change after it is then announced later and drops it. A row read before a change whose notice
  already arrived is used once and not kept.
- A read that must reflect position p (the caller's own last write, a consistency token: SPEC §2.10) is served
  from here only if `through` >= p; otherwise it waits for the projection and reads PostgreSQL as before.
- Without a live LISTEN connection nothing is served or kept (`through` is None); a lost connection clears
  everything, since notices may have been missed. A rebuild's swap announces "everything" (`ALL`).
- Every `ping_interval` the listener reads the projection's position; by the next ping the notices must have
  announced it. If they have not, the connection does not hear them (LISTEN through a transaction-mode pooler
  looks fine and hears nothing): everything is forgotten and listening starts again after a growing pause. So a
  connection that cannot hear keeps rows for about two pings at most, and never serves a caller's own writes
  stale (those wait for `through`, which only notices move).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import asyncpg
from loguru import logger

from pandora_users.observability import metrics as m
from pandora_users.observability.metrics import soon_counter, soon_histogram
from projections.queries.pagination import Where, select
from projections.queries.users import COLUMNS
from projections.users import CHANGED_CHANNEL, VIEW, parse_notice

Connect = Callable[[], Awaitable[asyncpg.Connection]]
Wait = Callable[[int], Awaitable[int]]

CAPACITY = 16_384  # rows; about 1 KiB each
PING_INTERVAL = 1.0  # seconds between checks of the LISTEN connection
MAX_RETRY = 30.0  # seconds: the longest wait before listening again
USERS_POSITION = f"(SELECT coalesce(max(position), 0) FROM projection_positions WHERE name = '{VIEW}')"  # noqa: S608
POSITION = f"SELECT {USERS_POSITION}"
# The row and the position it reflects: one statement, one snapshot (the projector commits both together).
ROW_AT = select(f"{COLUMNS}, {USERS_POSITION} AS read_at", VIEW, Where(["id = $1"]))

_hit, _miss = soon_counter(m.user_row_reads, "memory"), soon_counter(m.user_row_reads, "postgres")
_immediate = soon_histogram(m.consistency_wait, "immediate")  # the same record as Consistency's


class Deaf(Exception):
    """The LISTEN connection did not hear a batch that committed a ping ago."""

    def __init__(self, position: int) -> None:
        super().__init__(position)
        self.position = position


class UserRows:
    """Rows of the users read model by id, for this process (see the module's docstring)."""

    def __init__(
        self, pool: asyncpg.Pool, connect: Connect, *, capacity: int = CAPACITY, ping_interval: float = PING_INTERVAL
    ) -> None:
        self.pool = pool
        self.connect = connect
        self.capacity = capacity
        self.ping_interval = ping_interval
        self.through: int | None = None  # None: not listening; nothing is served or kept
        self._rows: OrderedDict[UUID, tuple[Any, int]] = OrderedDict()  # id -> (row, position read at)
        self._generation = 0  # moves on every (re)connection and loss: a read that spans one is not kept
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listener_pid: int | None = None  # the LISTEN connection's server process (for operators and tests)

    def __len__(self) -> int:
        return len(self._rows)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="user-rows-listener")

    async def close(self) -> None:
        self._closed.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._forget_all()

    async def row(self, user_id: UUID, wanted: int, wait: Wait) -> tuple[Any | None, int]:
        """The row of `user_id` (None if unknown) reflecting at least position `wanted`, and the position the
        answer reflects. `wait(wanted)` waits for the projection and returns its position; it is called only
        when the notices have not reached `wanted` yet."""
        kept = self.kept(user_id, wanted)
        if kept is not None:
            _hit.add()
            _immediate.observe(0.0)
            return kept
        _miss.add()
        through = self.through
        if through is None or through < wanted:
            through = await wait(wanted)
        else:
            _immediate.observe(0.0)  # as `wait` counts a read that needs no wait
        row = await self.load(user_id)
        return row, through if row is None else int(row["read_at"])

    def kept(self, user_id: UUID, wanted: int) -> tuple[Any, int] | None:
        """The kept row and the position it reflects, if it reflects `wanted`."""
        through = self.through
        if through is None or through < wanted:
            return None
        entry = self._rows.get(user_id)
        if entry is None:
            return None
        self._rows.move_to_end(user_id)
        return entry[0], max(entry[1], through)

    async def load(self, user_id: UUID) -> Any | None:
        """The row from PostgreSQL (None if unknown), kept when a later change is sure to be announced."""
        generation = self._generation
        row = await self.pool.fetchrow(ROW_AT, user_id)
        if row is None:
            return None
        read_at = int(row["read_at"])
        through = self.through
        if through is not None and generation == self._generation and read_at >= through:
            self._rows[user_id] = (row, read_at)
            self._rows.move_to_end(user_id)
            if len(self._rows) > self.capacity:
                self._rows.popitem(last=False)
        return row

    def on_notice(self, payload: str) -> None:
        """One notice from the users projector: drop the rows it names (read before it), then advance."""
        position, ids = parse_notice(payload)
        if ids is None:
            self._rows.clear()
        else:
            for user_id in ids:
                entry = self._rows.get(user_id)
                if entry is not None and entry[1] < position:
                    del self._rows[user_id]
        if self.through is not None and position > self.through:
            self.through = position

    def _forget_all(self) -> None:
        self.through = None
        self._generation += 1
        self._rows.clear()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            self.on_notice(payload)
        except ValueError:
            logger.error("user rows: unreadable notice {!r}; forgetting every row", payload[:80])
            self._forget_all()

    def _lost(self, _conn: object) -> None:
        self._forget_all()

    async def _listen(self) -> None:
        delay = 0.5
        while not self._closed.is_set():
            try:
                conn = await self.connect()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("user rows: cannot LISTEN ({}); reads go to PostgreSQL", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY)
                continue
            pause = 0.0
            try:
                self.listener_pid = conn.get_server_pid()
                conn.add_termination_listener(self._lost)
                await conn.add_listener(CHANGED_CHANNEL, self._notified)
                # Listening now: every change committed from here on is announced, so rows read from here on
                # (at a position >= this one) are kept until a notice names them.
                position = first = int(await conn.fetchval(POSITION))
                self._forget_all()
                self.through = position
                while True:
                    await asyncio.sleep(self.ping_interval)
                    # Every batch up to the position read at the last ping must have been announced by now.
                    if self.through is None or self.through < position:
                        raise Deaf(position)
                    if position > first:
                        delay = 0.5  # notices do arrive on this connection
                    position = int(await conn.fetchval(POSITION, timeout=2 * self.ping_interval))
            except Deaf as deaf:
                pause, delay = delay, min(delay * 2, MAX_RETRY)
                logger.error(
                    "user rows: position {} was not announced within {} s; LISTEN does not work on this "
                    "connection (a transaction-mode pooler?); reads go to PostgreSQL for {} s",
                    deaf.position,
                    self.ping_interval,
                    pause,
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("user rows: LISTEN connection lost ({}); reconnecting", type(exc).__name__)
            finally:
                self._forget_all()
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close(timeout=1))
            if pause:
                await asyncio.sleep(pause)
