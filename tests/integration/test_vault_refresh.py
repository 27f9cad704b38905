"""The secrets refresher (SPEC §6.2, §10.3) against a real OpenBao dev server: rotation without restart, outages,
token renewal and token files, and the `JWT_KEYS_DIR` rescan on SIGHUP.

The refresher's Vault calls run in worker threads, so the in-loop TCP gate below can cut Vault off and let it
back without stopping the server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from prometheus_client import REGISTRY

from pandora_users.bootstrap import signing_keys
from pandora_users.config.refresher import SecretsRefresher
from pandora_users.config.settings import Settings, load_settings
from pandora_users.config.vault import VaultOverlay
from pandora_users.domain.errors import Unauthorized
from pandora_users.infra.embedded import free_port
from pandora_users.security.keys import KeyRing, jwks
from pandora_users.security.tokens import TokenInvalid, TokenService
from tests.integration.test_vault import Bao, bao, ed25519_pem, new_path, vault_env, write  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(120)
ERRORS = "pandora_user_service_vault_errors_total"


class Gate:
    """A TCP forwarder in front of Vault that can refuse connections and then let them through again."""

    def __init__(self, target: str) -> None:
        self.target_port = int(target.rsplit(":", 1)[1])
        self.port = free_port()
        self.addr = f"https://127.0.0.1:{self.port}"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port, reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:  # pooled keep-alive connections must fail too
            writer.close()
        self._writers.clear()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@pytest.fixture
async def gate(bao: Bao) -> AsyncIterator[Gate]:  # noqa: F811
    g = Gate(bao.addr)
    await g.open()
    yield g
    await g.close()


def errors(operation: str) -> float:
    return REGISTRY.get_sample_value(ERRORS, {"operation": operation}) or 0.0


def settings_for(bao: Bao, path: str, tmp_path: Path, **extra: str) -> Settings:  # noqa: F811
    return load_settings(vault_env(bao, path, DATA_DIR=str(tmp_path / "data"), **extra))


def issue(tokens: TokenService) -> str:
    now = time.time()
    sid = str(uuid.uuid4())
    return tokens.issue_access(
        user_id=str(uuid.uuid4()),
        email="ann@example.com",
        role="user",
        audience="pandora-api",
        session_id=sid,
        session_expires_at=now + 3600,
        auth_time=now,
    ).token


def kid_of(token: str) -> str:
    header = token.split(".", 1)[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


def refresher_for(settings: Settings, addr: str, token: str, ca_cert: str, **kw: Any) -> SecretsRefresher:
    overlay = VaultOverlay(addr, token, settings.vault_secret_path, ca_cert=ca_cert, **kw)
    return SecretsRefresher(settings, KeyRing(signing_keys(settings)), overlay=overlay)


def captured(level: str = "WARNING") -> tuple[list[str], Callable[[], None]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level=level, format="{level} {message}")
    return lines, lambda: logger.remove(sink)


async def test_a_new_active_kid_signs_old_kids_verify_and_a_removed_kid_stops_verifying(
    bao: Bao,  # noqa: F811
    tmp_path: Path,
) -> None:
    path, base = new_path()
    pem_a, pem_b = ed25519_pem(), ed25519_pem()
    write(bao, base, "jwt", {"signing_keys": {"kid-a": pem_a}, "active_kid": "kid-a"})
    settings = settings_for(bao, path, tmp_path)
    refresher = refresher_for(settings, bao.addr, bao.root_token, bao.ca_cert)
    tokens = TokenService(refresher.keyring, settings.jwt_issuer, 900)
    old = issue(tokens)
    try:
        assert kid_of(old) == "kid-a"
        assert await refresher.refresh_vault() is False  # nothing changed: the ring is left alone
        write(bao, base, "jwt", {"signing_keys": {"kid-a": pem_a, "kid-b": pem_b}, "active_kid": "kid-b"})
        assert await refresher.refresh_vault() is True
        assert kid_of(issue(tokens)) == "kid-b"
        assert tokens.verify_access(old, audience=None).sub  # kid-a is still present: it still verifies
        assert [k["kid"] for k in jwks(refresher.keyring.current)["keys"]] == ["kid-b", "kid-a"]
        write(bao, base, "jwt", {"signing_keys": {"kid-b": pem_b}, "active_kid": "kid-b"})
        assert await refresher.refresh_vault() is True
        with pytest.raises(TokenInvalid) as refused:
            tokens.verify_access(old, audience=None)
        assert refused.value.reason == "unknown_key"
        assert [k["kid"] for k in jwks(refresher.keyring.current)["keys"]] == ["kid-b"]
    finally:
        await refresher.stop()


async def test_an_unreachable_vault_is_counted_keeps_the_keys_and_recovers(
    bao: Bao,  # noqa: F811
    gate: Gate,
    tmp_path: Path,
) -> None:
    path, base = new_path()
    pem_a, pem_b = ed25519_pem(), ed25519_pem()
    write(bao, base, "jwt", {"signing_keys": {"kid-a": pem_a}})
    settings = settings_for(bao, path, tmp_path)
    refresher = refresher_for(settings, gate.addr, bao.root_token, bao.ca_cert, timeout=2)
    before = refresher.keyring.current
    lines, stop_capture = captured("ERROR")
    try:
        assert await refresher.refresh_vault() is False  # the pooled connection through the gate is now open
        await gate.close()
        write(bao, base, "jwt", {"signing_keys": {"kid-a": pem_a, "kid-b": pem_b}, "active_kid": "kid-b"})
        counted, renewals = errors("refresh"), errors("renew")
        assert await refresher.refresh_vault() is False
        assert await refresher.renew_token() is False
        assert errors("refresh") == counted + 1 and errors("renew") == renewals + 1
        assert refresher.keyring.current is before  # the last good keys stay in use
        assert any("unreachable" in line for line in lines)
        assert not any(bao.root_token in line or "PRIVATE KEY" in line for line in lines)
        await gate.open()
        assert await refresher.refresh_vault() is True
        assert refresher.keyring.current.active_kid == "kid-b" and errors("refresh") == counted + 1
    finally:
        stop_capture()
        await refresher.stop()


async def test_invalid_keys_in_vault_are_counted_and_start_up_only_changes_ask_for_a_restart(
    bao: Bao,  # noqa: F811
    tmp_path: Path,
) -> None:
    path, base = new_path()
    pem_a = ed25519_pem()
    write(bao, base, "jwt", {"signing_keys": {"kid-a": pem_a}})
    write(bao, base, "database", {"password": "db-secret-one"})
    settings = settings_for(bao, path, tmp_path)
    refresher = refresher_for(settings, bao.addr, bao.root_token, bao.ca_cert)
    before = refresher.keyring.current
    lines, stop_capture = captured()
    try:
        write(bao, base, "jwt", {"signing_keys": {"kid-a": pem_a}, "active_kid": "kid-missing"})
        counted = errors("refresh")
        assert await refresher.refresh_vault() is False
        assert errors("refresh") == counted + 1 and refresher.keyring.current is before
        write(bao, base, "jwt", {"signing_keys": {"kid-a": pem_a}})
        write(bao, base, "database", {"password": "db-secret-two"})
        write(bao, base, "grpc", {"service_tokens": "billing:" + "t" * 40})
        assert await refresher.refresh_vault() is False and refresher.keyring.current is before
        assert await refresher.refresh_vault() is False  # the same change is reported once, not at every refresh
        warnings = [line for line in lines if "restart" in line]
        assert len(warnings) == 1 and "DB_PASSWORD, SERVICE_TOKENS" in warnings[0]
        assert not any("db-secret" in line or "t" * 40 in line for line in lines)
        assert settings.db_password is not None and settings.db_password.get() == "db-secret-one"
    finally:
        stop_capture()
        await refresher.stop()


async def test_service_tokens_are_applied_on_refresh_when_a_grpc_listener_takes_them(
    bao: Bao,  # noqa: F811
    tmp_path: Path,
) -> None:
    """SPEC §10.3: SERVICE_TOKENS are read at start-up and on refresh."""
    from rpc.auth import ServiceAuth

    path, base = new_path()
    write(bao, base, "jwt", {"signing_keys": {"kid-a": ed25519_pem()}})
    write(bao, base, "grpc", {"service_tokens": "wallet:" + "w" * 40})
    settings = settings_for(bao, path, tmp_path)
    refresher = refresher_for(settings, bao.addr, bao.root_token, bao.ca_cert)
    auth = ServiceAuth(settings.service_tokens)
    refresher.on_service_tokens = auth.replace
    lines, stop_capture = captured("INFO")
    try:
        assert auth.authenticate("Bearer " + "w" * 40).name == "wallet"
        write(bao, base, "grpc", {"service_tokens": "billing:" + "b" * 40 + ":GetUser"})
        await refresher.refresh_vault()
        caller = auth.authenticate("Bearer " + "b" * 40)
        assert caller.name == "billing" and caller.allowed == frozenset({"GetUser"})
        with pytest.raises(Unauthorized):
            auth.authenticate("Bearer " + "w" * 40)  # the replaced token stops working
        write(bao, base, "grpc", {"service_tokens": "broken"})  # invalid: the last good tokens stay
        counted = errors("refresh")
        await refresher.refresh_vault()
        assert auth.authenticate("Bearer " + "b" * 40).name == "billing"
        assert errors("refresh") == counted + 1
        assert any("ERROR" in line and "SERVICE_TOKENS" in line for line in lines)
        assert not any("WARNING" in line and "SERVICE_TOKENS" in line for line in lines)  # applied, no restart asked
        assert not any("b" * 40 in line or "w" * 40 in line for line in lines)
    finally:
        stop_capture()
        await refresher.stop()


def reader_policy(bao: Bao, base: str) -> str:  # noqa: F811
    name = f"read-{uuid.uuid4().hex[:8]}"
    bao.client().sys.create_or_update_policy(name, f'path "secret/data/{base}/*" {{ capabilities = ["read"] }}')
    return name


async def test_the_running_refresher_renews_a_short_lived_token_and_rotates_keys(
    bao: Bao,  # noqa: F811
    tmp_path: Path,
) -> None:
    path, base = new_path()
    pem_a, pem_b = ed25519_pem(), ed25519_pem()
    write(bao, base, "jwt", {"signing_keys": {"kid-a": pem_a}})
    policy = reader_policy(bao, base)
    child = bao.client().auth.token.create(ttl="4s", renewable=True, policies=[policy])["auth"]["client_token"]
    settings = settings_for(bao, path, tmp_path, VAULT_TOKEN=child, VAULT_REFRESH_INTERVAL="1s")
    refresher = refresher_for(settings, bao.addr, child, bao.ca_cert)
    renewals = errors("renew")
    refresher.start()
    try:
        write(bao, base, "jwt", {"signing_keys": {"kid-a": pem_a, "kid-b": pem_b}, "active_kid": "kid-b"})
        await asyncio.sleep(6.5)  # longer than the token's 4 s: it lives only if it was renewed
        info = bao.client().auth.token.lookup(child)["data"]
        assert info["ttl"] > 0 and info["creation_ttl"] == 4
        assert refresher.keyring.current.active_kid == "kid-b"
        assert errors("renew") == renewals
    finally:
        await refresher.stop()


async def test_a_replaced_token_file_is_used_for_the_next_calls(bao: Bao, tmp_path: Path) -> None:  # noqa: F811
    path, base = new_path()
    write(bao, base, "jwt", {"signing_keys": {"kid-a": ed25519_pem()}})
    policy = reader_policy(bao, base)
    first, second = (
        bao.client().auth.token.create(ttl="1h", renewable=True, policies=[policy])["auth"]["client_token"]
        for _ in range(2)
    )
    token_file = tmp_path / "vault-token"
    token_file.write_text(first + "\n")
    settings = settings_for(bao, path, tmp_path)
    refresher = refresher_for(settings, bao.addr, first, bao.ca_cert, token_file=token_file)
    try:
        token_file.write_text(second + "\n")
        bao.client().auth.token.revoke(first)
        counted = errors("refresh"), errors("renew")
        assert await refresher.refresh_vault() is False
        assert await refresher.renew_token() is False  # 1 h left: not due yet, but the lookup succeeded
        assert (errors("refresh"), errors("renew")) == counted
    finally:
        await refresher.stop()


async def test_keys_dir_is_rescanned_on_sighup(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "2026-01-01.pem").write_text(ed25519_pem())
    env = {"DATA_DIR": str(tmp_path / "data"), "JWT_KEYS_DIR": str(keys_dir)}
    settings = load_settings(env)
    keyring = KeyRing(signing_keys(settings))
    refresher = SecretsRefresher.for_settings(settings, keyring, env)
    assert refresher is not None and refresher.overlay is None and refresher.watcher is not None
    refresher.start()
    try:
        assert refresher.handles_sighup  # else the signal below would end the test run
        (keys_dir / "2026-03-01.pem").write_text(ed25519_pem())
        os.kill(os.getpid(), signal.SIGHUP)  # the 60 s rescan is far away: only SIGHUP can trigger it
        deadline = time.monotonic() + 5
        while keyring.current.active_kid != "2026-03-01":
            assert time.monotonic() < deadline, "SIGHUP did not trigger a rescan"
            await asyncio.sleep(0.05)
        assert set(keyring.current.keys) == {"2026-01-01", "2026-03-01"}
    finally:
        await refresher.stop()
