"""The four projections of SPEC §1.4 by name, and a supervisor that runs some of them in threads."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loguru import logger

from pandora_users.store.app import EventStore
from projections.runner import Projection, Runner

NAMES = ("users", "event_log", "revocations", "forwarder")
READ_MODELS = ("users", "event_log")  # rebuildable views; the other two are delivery processes


@dataclass(frozen=True)
class ProjectionDeps:
    """What projections are built from (a slice of the runtime, so tests can build it directly)."""

    store: EventStore
    conninfo: str
    redis_url: str | None
    redis_key_prefix: str = "pandora-users:"
    events_stream: str = "user-service:events"
    events_stream_maxlen: int = 10_000
    access_token_ttl: float = 900.0
    batch_size: int = 100


def build(name: str, deps: ProjectionDeps) -> Projection:
    """The projection called `name` (imports lazily: a process runs only what it needs)."""
    if name == "users":
        from projections.users import UsersProjection

        users: Projection = UsersProjection()
        return users
    if name == "event_log":
        from projections.event_log import EventLogProjection

        event_log: Projection = EventLogProjection()
        return event_log
    if name == "revocations":
        from projections.revocations import RevocationsProjection

        revocations: Projection = RevocationsProjection.from_deps(deps)
        return revocations
    if name == "forwarder":
        from projections.forwarder import ForwarderProjection

        forwarder: Projection = ForwarderProjection.from_deps(deps)
        return forwarder
    raise ValueError(f"unknown projection {name!r}; expected one of {', '.join(NAMES)}")


class Supervisor:
    """Runs projections in daemon threads; `stop()` lets each finish its current batch."""

    def __init__(self, deps: ProjectionDeps, names: Sequence[str], **runner_options: Any) -> None:
        self.runners = [
            Runner(deps.store, deps.conninfo, build(n, deps), batch_size=deps.batch_size, **runner_options)
            for n in names
        ]
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for runner in self.runners:
            thread = threading.Thread(target=runner.run, name=f"projection-{runner.name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        for runner in self.runners:
            runner.stop()
        for thread in self.threads:
            thread.join(timeout)
            if thread.is_alive():
                logger.error("projection thread {} did not stop within {} s", thread.name, timeout)
