"""A database outage is 503 `service_unavailable` with `Retry-After` (SPEC §2.6), not a 500."""

from __future__ import annotations

import asyncpg
import psycopg
import pytest
from eventsourcing import persistence as es_persistence
from litestar import get
from litestar.testing import create_test_client

from api.errors import EXCEPTION_HANDLERS


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
        ConnectionRefusedError(111, "Connection refused"),
        psycopg.OperationalError("server closed the connection unexpectedly"),
        es_persistence.OperationalError("canceling statement due to statement timeout"),  # a command's append
    ],
    ids=type,
)
def test_a_database_outage_is_503_service_unavailable(exc: Exception) -> None:
    @get("/read", sync_to_thread=False)
    def read() -> None:
        raise exc

    with create_test_client([read], exception_handlers=EXCEPTION_HANDLERS) as client:
        r = client.get("/read")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    body = r.json()
    assert (body["error"], body["code"], body["retry_after_seconds"]) == (
        "service_unavailable",
        "SERVICE_UNAVAILABLE",
        1,
    )


def test_any_other_error_stays_a_500() -> None:
    @get("/read", sync_to_thread=False)
    def read() -> None:
        raise KeyError("a bug")

    with create_test_client([read], exception_handlers=EXCEPTION_HANDLERS) as client:
        r = client.get("/read")
    assert r.status_code == 500 and r.json()["error"] == "internal_error"
