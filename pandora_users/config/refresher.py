"""Rotation without restart (SPEC §6.2, §10.3): a background task that keeps the signing keys current.

Every `VAULT_REFRESH_INTERVAL` it re-reads Vault and swaps the KeyRing when the signing keys (or the HS256
secret) changed; it renews a renewable Vault token at two thirds of its TTL; it rescans `JWT_KEYS_DIR` every
60 s. SIGHUP runs every job at once. A failure keeps the last good keys, logs an ERROR, counts
`vault_errors_total{operation}` and is retried at the next interval. Secrets read only at start-up that
changed in Vault are not half-applied: a WARNING says that a restart is needed. SERVICE_TOKENS are applied on
refresh (SPEC §10.3) once the gRPC listener has registered `on_service_tokens`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import signal
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from loguru import logger

from pandora_users.config.env_edge import ServiceToken, parse_service_tokens
from pandora_users.config.secret import Secret
from pandora_users.config.vault import VaultOverlay, VaultRefreshError, VaultSecrets
from pandora_users.observability import metrics as m
from pandora_users.security.keys import (
    KeyDirWatcher,
    KeyMaterialError,
    KeyRing,
    KeySet,
    hs256_keyset,
    load_eddsa_mapping,
)

if TYPE_CHECKING:
    from pandora_users.config.settings import Settings

REFRESH, RENEW, RESCAN = "refresh", "renew", "rescan"
KEYS_DIR_INTERVAL = 60.0  # SPEC §6.2
MIN_SLEEP = 0.2  # never spin, even when a renewal is overdue
VaultKeys = tuple[dict[str, Secret[str]] | None, str | None]


class SecretsRefresher:
    """Owned by the Runtime: `start()` on the running loop, `await stop()` at shutdown."""

    def __init__(
        self,
        settings: Settings,
        keyring: KeyRing,
        *,
        overlay: VaultOverlay | None = None,
        watcher: KeyDirWatcher | None = None,
        keys_dir_interval: float = KEYS_DIR_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.keyring = keyring
        self.overlay = overlay
        self.watcher = watcher
        self._intervals = {REFRESH: settings.vault_refresh_interval, RENEW: settings.vault_refresh_interval}
        self._intervals[RESCAN] = keys_dir_interval
        self._clock = clock
        now = clock()
        self._due: dict[str, float] = {}
        if overlay is not None:
            self._due[RENEW] = now  # learn the token's TTL at once: it may expire before the first refresh
            self._due[REFRESH] = now + self._intervals[REFRESH]
        if watcher is not None:
            self._due[RESCAN] = now + keys_dir_interval
        self._applied_keys: VaultKeys = (settings.vault_signing_keys, settings.vault_active_kid)
        # Set by the gRPC listener of this process: it takes new service tokens without a restart.
        self.on_service_tokens: Callable[[tuple[ServiceToken, ...]], None] | None = None
        # Set by a process with HTTP worker children: a SIGHUP to it refreshes them too.
        self.on_sighup: Callable[[], None] | None = None
        self._applied_service_tokens = settings.service_tokens
        self._applied_secret = settings.jwt_secret
        self._warned_restart: frozenset[str] = frozenset()
        self._warned_keys_removed = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sighup = False

    @classmethod
    def for_settings(cls, settings: Settings, keyring: KeyRing, environ: Mapping[str, str]) -> SecretsRefresher | None:
        """The refresher a process needs (Vault enabled, or keys from `JWT_KEYS_DIR`), else None."""
        overlay = VaultOverlay.from_env(environ) if settings.vault_enabled else None
        watcher = None
        if settings.jwt_algorithm == "EdDSA" and not settings.vault_signing_keys and settings.jwt_keys_dir:
            watcher = KeyDirWatcher(settings.jwt_keys_dir, keyring)
        if overlay is None and watcher is None:
            return None
        return cls(settings, keyring, overlay=overlay, watcher=watcher)

    def start(self) -> None:
        """Run the jobs in a task of the running loop; SIGHUP runs them at once (main thread only)."""
        self._task = asyncio.create_task(self._run(), name="secrets-refresher")
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._sighup_received)
            self._sighup = True

    @property
    def handles_sighup(self) -> bool:
        """Whether `start()` installed the SIGHUP handler (only possible in the main thread)."""
        return self._sighup

    def _sighup_received(self) -> None:
        self.run_soon()
        if self.on_sighup is not None:
            self.on_sighup()

    def run_soon(self) -> None:
        """Make every job due now (SIGHUP)."""
        now = self._clock()
        self._due = {job: now for job in self._due}
        self._wake.set()

    async def stop(self) -> None:
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.overlay is not None:
            await asyncio.to_thread(self.overlay.close)

    async def _run(self) -> None:
        while True:
            delay = max(MIN_SLEEP, min(self._due.values(), default=self._clock() + 3600) - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            await self.run_due()

    async def run_due(self) -> None:
        """Run the jobs that are due, each off the event loop (hvac and file reads block)."""
        now = self._clock()
        due = [job for job in (RENEW, REFRESH, RESCAN) if self._due.get(job, now + 1) <= now]
        jobs = {RENEW: self.renew_token, REFRESH: self.refresh_vault, RESCAN: self.rescan_keys_dir}
        for job in due:
            self._due[job] = now + self._intervals[job]
            try:
                await jobs[job]()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive a bug; the failure is logged
                # Only the type: a message or traceback could carry a URL with credentials.
                failure = type(exc).__name__
                logger.error("key refresh job {} failed unexpectedly ({}); retried at the next interval", job, failure)
                if job != RESCAN:
                    m.vault_errors.labels(job).inc()

    async def rescan_keys_dir(self) -> bool:
        """Reload `JWT_KEYS_DIR` into the KeyRing when it changed; True when it did."""
        return self.watcher is not None and await asyncio.to_thread(self.watcher.rescan)

    async def renew_token(self) -> bool:
        """Renew the Vault token when due; schedule the next check by its TTL. True when it was renewed."""
        if self.overlay is None:
            return False
        try:
            renewed = await asyncio.to_thread(self.overlay.renew_token_if_due)
        except VaultRefreshError:
            m.vault_errors.labels(RENEW).inc()
            return False
        if self.overlay.renew_in is not None and RENEW in self._due:
            self._due[RENEW] = min(self._due[RENEW], self._clock() + self.overlay.renew_in)
        if renewed:
            logger.info("Vault token renewed")
        return renewed

    async def refresh_vault(self) -> bool:
        """Re-read Vault and swap in changed signing keys; True when the KeyRing changed."""
        if self.overlay is None:
            return False
        try:
            secrets = await asyncio.to_thread(self.overlay.refresh)
            keyset = await asyncio.to_thread(self._changed_keys, secrets) if self._keys_changed(secrets) else None
        except (VaultRefreshError, KeyMaterialError) as exc:
            if isinstance(exc, KeyMaterialError):  # VaultRefreshError was logged where it was raised
                logger.error("Vault refresh failed, keeping the last good values: {}", exc)
            m.vault_errors.labels(REFRESH).inc()
            return False
        self._apply_service_tokens(self.overlay.latest or secrets)
        self._warn_restart_needed(self.overlay.latest or secrets)
        if keyset is None:
            return False
        self.keyring.swap(keyset)
        self._applied_keys, self._applied_secret = (secrets.signing_keys, secrets.active_kid), secrets.jwt_secret
        if self.watcher is not None:
            logger.info("signing keys now come from Vault; JWT_KEYS_DIR is no longer rescanned")
            self.watcher = None
            self._due.pop(RESCAN, None)
        logger.info("signing keys rotated from Vault: active kid {}, {} keys", keyset.active_kid, len(keyset.keys))
        return True

    def _keys_changed(self, secrets: VaultSecrets) -> bool:
        """Whether Vault holds keys other than the applied ones (keys removed from Vault are kept, with a warning)."""
        if self.settings.jwt_algorithm == "HS256":
            return secrets.jwt_secret is not None and secrets.jwt_secret != self._applied_secret
        if secrets.signing_keys is None:
            if self._applied_keys[0] is not None and not self._warned_keys_removed:
                logger.warning("signing_keys were removed from Vault: the last keys stay in use until a restart")
            self._warned_keys_removed = self._applied_keys[0] is not None
            return False
        self._warned_keys_removed = False
        return (secrets.signing_keys, secrets.active_kid) != self._applied_keys

    def _changed_keys(self, secrets: VaultSecrets) -> KeySet:
        """The KeySet of Vault's keys (PEM parsing: run it in a worker thread); KeyMaterialError when bad."""
        if self.settings.jwt_algorithm == "HS256" and secrets.jwt_secret is not None:
            return hs256_keyset(secrets.jwt_secret.get(), self.settings.jwt_kid or "static-v1")
        keys = {kid: pem.get() for kid, pem in (secrets.signing_keys or {}).items()}
        return load_eddsa_mapping(keys, secrets.active_kid)

    def _apply_service_tokens(self, latest: VaultSecrets) -> None:
        """Hand changed, valid service tokens to the gRPC listener (names only in the log, never tokens)."""
        if self.on_service_tokens is None or latest.service_tokens is None:
            return
        tokens, problems = parse_service_tokens(latest.service_tokens.get())
        if problems or tokens == self._applied_service_tokens:
            return  # invalid ones never get here: the overlay fails that refresh (counted, logged)
        self.on_service_tokens(tokens)
        self._applied_service_tokens = tokens
        logger.info("service tokens updated from Vault: {}", ", ".join(t.name for t in tokens))

    def _warn_restart_needed(self, latest: VaultSecrets) -> None:
        live = frozenset({"SERVICE_TOKENS"}) if self.on_service_tokens is not None else frozenset()
        changed = frozenset(restart_needed(self.settings, latest)) - live | {name for name, _ in latest.problems}
        if changed and changed != self._warned_restart:
            logger.warning(
                "{} changed in Vault (or are no longer valid there): the values read at start-up stay in use "
                "until the service restarts",
                ", ".join(sorted(changed)),
            )
        self._warned_restart = changed


def restart_needed(settings: Settings, latest: VaultSecrets) -> list[str]:
    """The start-up-only variables whose value in Vault differs from the one in use (names only)."""
    pairs: list[tuple[str, object, object]] = [
        ("DB_PASSWORD", latest.db_password, settings.db_password),
        ("REDIS_PASSWORD", latest.redis_password, settings.redis_password),
        ("EMAIL_INDEX_KEY", latest.email_index_key, settings.email_index_key),
        ("DATA_ENCRYPTION_KEY", _decoded(latest.data_encryption_key), settings.data_encryption_key),
    ]
    if latest.service_tokens is not None:  # the gRPC server reads SERVICE_TOKENS once, at start-up
        pairs.append(("SERVICE_TOKENS", parse_service_tokens(latest.service_tokens.get())[0], settings.service_tokens))
    return [name for name, fresh, used in pairs if fresh is not None and fresh != used]


def _decoded(key: Secret[str] | None) -> Secret[bytes] | None:
    """DATA_ENCRYPTION_KEY's bytes, as the settings loader decodes them; undecodable → a value never equal."""
    if key is None:
        return None
    text = key.get()
    altchars = b"-_" if ("-" in text or "_" in text) else None
    try:
        return Secret(base64.b64decode(text, altchars=altchars, validate=True))
    except (binascii.Error, ValueError):
        return Secret(b"")
