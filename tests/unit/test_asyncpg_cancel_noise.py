"""asyncpg#1310's unretrieved ConnectionError is not reported as an error; every other report still is."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from pandora_users.infra.read_pool import quiet_asyncpg_cancel_noise


def _abandon_future_with(loop: asyncio.AbstractEventLoop, exc: BaseException) -> None:
    future = loop.create_future()
    future.set_exception(exc)
    del future
    gc.collect()  # asyncio reports an unretrieved exception when the future is collected


@pytest.mark.parametrize("installs", [1, 2])
def test_only_the_asyncpg_leftover_is_quieted(caplog: pytest.LogCaptureFixture, installs: int) -> None:
    loop = asyncio.new_event_loop()
    try:
        for _ in range(installs):  # installing twice does not wrap twice
            quiet_asyncpg_cancel_noise(loop)
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            _abandon_future_with(loop, ConnectionError("unexpected connection_lost() call"))
            assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
            _abandon_future_with(loop, ConnectionError("something else"))
            _abandon_future_with(loop, ConnectionResetError("unexpected connection_lost() call"))
        errors = [r.getMessage().splitlines()[0] for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == ["Future exception was never retrieved"] * 2
    finally:
        loop.close()


def test_a_handler_installed_before_still_gets_the_rest() -> None:
    loop = asyncio.new_event_loop()
    seen: list[str] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(str(context.get("exception"))))
    try:
        quiet_asyncpg_cancel_noise(loop)
        _abandon_future_with(loop, ConnectionError("unexpected connection_lost() call"))
        _abandon_future_with(loop, ValueError("ours"))
        assert seen == ["ours"]
    finally:
        loop.close()
