"""Access tokens, signing keys, JWKS and rotation (SPEC §6.1, §6.2), and opaque tokens (§6.4)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey

from pandora_users.security.keys import (
    KeyDirWatcher,
    KeyMaterialError,
    KeyRing,
    KeySet,
    generate_dev_key,
    hs256_keyset,
    jwks,
    load_eddsa_keys_dir,
    load_eddsa_mapping,
    load_eddsa_pem,
)
from pandora_users.security.tokens import (
    AccessClaims,
    TokenInvalid,
    TokenService,
    hash_opaque_token,
    new_opaque_token,
)

ISSUER = "pandora-exchange"
T0 = 1_800_000_000.0
SECRET = "s3cret-" * 6


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def pem_of(private: Ed25519PrivateKey | Ed448PrivateKey) -> str:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def raw_ed25519(keyset: KeySet, kid: str | None = None) -> Ed25519PrivateKey:
    okp = keyset.keys[kid or keyset.active_kid].private_key
    assert isinstance(okp, OKPKey)
    private = okp.private_key
    assert isinstance(private, Ed25519PrivateKey)
    return private


def good_claims(now: float = T0, **changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": "pandora-api",
        "user_id": "user-1",
        "email": "jane@example.com",
        "role": "user",
        "token_type": "access",
        "sid": "session-1",
        "jti": str(uuid.uuid4()),
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + 900,
        "auth_time": int(now),
        "amr": ["pwd"],
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def forge(
    header: dict[str, Any] | str,
    claims: dict[str, Any] | str,
    *,
    ed25519: Ed25519PrivateKey | None = None,
    hmac_key: bytes | None = None,
    signature: bytes | None = None,
) -> str:
    """A compact JWS built by hand (raw JSON text allowed, to smuggle duplicate keys)."""
    header_text = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    claims_text = claims if isinstance(claims, str) else json.dumps(claims, separators=(",", ":"))
    signing_input = f"{b64(header_text.encode())}.{b64(claims_text.encode())}"
    if ed25519 is not None:
        signature = ed25519.sign(signing_input.encode("ascii"))
    elif hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature or b'')}"


@pytest.fixture(scope="module")
def eddsa() -> KeySet:
    return load_eddsa_pem(pem_of(Ed25519PrivateKey.generate()), kid="2026-01-01")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(eddsa: KeySet, clock: Clock) -> TokenService:
    return TokenService(KeyRing(eddsa), ISSUER, 900, clock=clock)


def issue(service: TokenService, *, session_expires_at: float = T0 + 7 * 86400, audience: str = "pandora-api") -> str:
    return service.issue_access(
        user_id="user-1",
        email="jane@example.com",
        role="user",
        audience=audience,
        session_id="session-1",
        session_expires_at=session_expires_at,
        auth_time=T0 - 3600,
    ).token


def reason_of(service: TokenService, token: Any, audience: str | None = "pandora-api") -> str:
    with pytest.raises(TokenInvalid) as caught:
        service.verify_access(token, audience=audience)
    return caught.value.reason


# --- issuing and round trips ---------------------------------------------------------------------------


def test_eddsa_round_trip_matches_the_spec(service: TokenService, eddsa: KeySet) -> None:
    issued = service.issue_access(
        user_id="user-1",
        email="jane@example.com",
        role="admin",
        audience="pandora-admin",
        session_id="session-1",
        session_expires_at=T0 + 86400,
        auth_time=T0 - 3600.7,
    )
    header_segment, payload_segment, _ = issued.token.split(".")
    assert "=" not in issued.token
    assert list(json.loads(unb64(header_segment))) == ["alg", "typ", "kid"]
    assert json.loads(unb64(header_segment)) == {"alg": "EdDSA", "typ": "at+jwt", "kid": "2026-01-01"}
    payload = json.loads(unb64(payload_segment))
    assert payload == {
        "iss": ISSUER,
        "aud": "pandora-admin",
        "sub": "user-1",
        "user_id": "user-1",
        "email": "jane@example.com",
        "role": "admin",
        "token_type": "access",
        "sid": "session-1",
        "jti": issued.jti,
        "iat": int(T0),
        "nbf": int(T0),
        "exp": int(T0) + 900,
        "auth_time": int(T0 - 3600.7),
        "amr": ["pwd"],
    }
    assert uuid.UUID(issued.jti).version == 4
    assert (issued.issued_at, issued.expires_at) == (int(T0), int(T0) + 900)

    claims = service.verify_access(issued.token, audience="pandora-admin")
    assert isinstance(claims, AccessClaims)
    assert (claims.sub, claims.sid, claims.role, claims.aud, claims.amr) == (
        "user-1",
        "session-1",
        "admin",
        "pandora-admin",
        ("pwd",),
    )
    assert claims.exp == int(T0) + 900
    with pytest.raises(AttributeError):
        claims.role = "user"  # type: ignore[misc]


def test_jti_is_unique(service: TokenService) -> None:
    jtis = {service.verify_access(issue(service), audience=None).jti for _ in range(20)}
    assert len(jtis) == 20


def test_hs256_round_trip(clock: Clock) -> None:
    service = TokenService(hs256_keyset(SECRET, "static-v1"), ISSUER, 900, clock=clock)
    token = issue(service)
    assert json.loads(unb64(token.split(".")[0])) == {"alg": "HS256", "typ": "at+jwt", "kid": "static-v1"}
    assert service.verify_access(token, audience="pandora-api").sub == "user-1"
    other_secret = TokenService(hs256_keyset("x" * 40, "static-v1"), ISSUER, 900, clock=clock)
    assert reason_of(other_secret, token) == "bad_signature"


def test_exp_is_capped_at_session_expiry(service: TokenService) -> None:
    issued = service.issue_access(
        user_id="user-1",
        email="jane@example.com",
        role="user",
        audience="pandora-api",
        session_id="session-1",
        session_expires_at=T0 + 60.9,
        auth_time=T0,
    )
    assert issued.expires_at == int(T0) + 60
    assert service.verify_access(issued.token, audience=None).exp == int(T0) + 60


# --- rejections ----------------------------------------------------------------------------------------


def test_tampered_signature_and_payload(service: TokenService) -> None:
    header, payload, signature = issue(service).split(".")
    flipped = bytearray(unb64(signature))
    flipped[0] ^= 0x01
    assert reason_of(service, f"{header}.{payload}.{b64(bytes(flipped))}") == "bad_signature"
    other_payload = b64(json.dumps(good_claims(role="admin")).encode())
    assert reason_of(service, f"{header}.{other_payload}.{signature}") == "bad_signature"


def test_unknown_kid(service: TokenService) -> None:
    stranger = Ed25519PrivateKey.generate()
    token = forge({"alg": "EdDSA", "typ": "at+jwt", "kid": "nope"}, good_claims(), ed25519=stranger)
    assert reason_of(service, token) == "unknown_key"


def test_alg_none_is_never_accepted(service: TokenService) -> None:
    header = {"alg": "none", "typ": "at+jwt", "kid": "2026-01-01"}
    assert reason_of(service, forge(header, good_claims())) == "malformed"  # empty signature segment
    assert reason_of(service, forge(header, good_claims(), signature=b"x")) == "bad_signature"
    assert reason_of(service, forge({**header, "alg": "None"}, good_claims(), signature=b"x")) == "bad_signature"


def test_hs256_is_refused_when_eddsa_is_configured(service: TokenService, eddsa: KeySet) -> None:
    # The classic confusion attack: HMAC keyed with the published public key.
    public_x = unb64(jwks(eddsa)["keys"][0]["x"])
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "2026-01-01"}
    assert reason_of(service, forge(header, good_claims(), hmac_key=public_x)) == "bad_signature"


def test_eddsa_is_refused_when_hs256_is_configured(eddsa: KeySet, clock: Clock) -> None:
    hs = TokenService(hs256_keyset(SECRET, "2026-01-01"), ISSUER, 900, clock=clock)
    token = forge({"alg": "EdDSA", "typ": "at+jwt", "kid": "2026-01-01"}, good_claims(), ed25519=raw_ed25519(eddsa))
    assert reason_of(hs, token) == "bad_signature"


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "EdDSA", "typ": "at+jwt", "kid": "2026-01-01", "jku": "https://evil.example/jwks.json"},
        {"alg": "EdDSA", "typ": "at+jwt", "kid": "2026-01-01", "jwk": {"kty": "OKP"}},
        {"alg": "EdDSA", "typ": "at+jwt", "kid": "2026-01-01", "x5u": "https://evil.example/cert"},
        {"alg": "EdDSA", "typ": "at+jwt", "kid": "2026-01-01", "crit": ["exp"]},
        {"alg": "EdDSA", "typ": "at+jwt", "kid": "2026-01-01", "b64": False},
        {"alg": "EdDSA", "typ": "at+jwt"},
        {"alg": "EdDSA", "kid": "2026-01-01"},
        {"alg": "EdDSA", "typ": "at+jwt", "kid": 7},
        {"alg": "EdDSA", "typ": None, "kid": "2026-01-01"},
    ],
)
def test_header_must_hold_exactly_alg_typ_kid(service: TokenService, eddsa: KeySet, header: dict[str, Any]) -> None:
    assert reason_of(service, forge(header, good_claims(), ed25519=raw_ed25519(eddsa))) == "malformed"


def test_duplicate_keys_are_rejected(service: TokenService, eddsa: KeySet) -> None:
    key = raw_ed25519(eddsa)
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": "2026-01-01"}
    body = json.dumps(good_claims(role="user"), separators=(",", ":"))
    duplicated_role = body[:-1] + ',"role":"admin"}'
    assert reason_of(service, forge(header, duplicated_role, ed25519=key)) == "malformed"
    nested = body[:-1] + ',"extra":{"a":1,"a":2}}'
    assert reason_of(service, forge(header, nested, ed25519=key)) == "malformed"
    duplicated_header = '{"alg":"EdDSA","typ":"at+jwt","kid":"nope","kid":"2026-01-01"}'
    assert reason_of(service, forge(duplicated_header, body, ed25519=key)) == "malformed"
    # The same token without the duplicate passes: the forger is sound.
    assert service.verify_access(forge(header, body, ed25519=key), audience="pandora-api").role == "user"


@pytest.mark.parametrize(
    "changes",
    [
        {"sid": None},
        {"sub": None},
        {"jti": None},
        {"aud": None},
        {"exp": None},
        {"iat": None},
        {"nbf": None},
        {"exp": str(int(T0) + 900)},
        {"exp": T0 + 900.5},
        {"exp": True},
        {"aud": ["pandora-api"]},
        {"sub": 42},
        {"amr": "pwd"},
    ],
)
def test_required_claims_with_json_types(service: TokenService, eddsa: KeySet, changes: dict[str, Any]) -> None:
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": "2026-01-01"}
    token = forge(header, good_claims(**changes), ed25519=raw_ed25519(eddsa))
    assert reason_of(service, token, audience=None) == "malformed"


@pytest.mark.parametrize("claims_text", ['["not", "an", "object"]', '{"exp": NaN}', "not json", '{"iss": 1} x'])
def test_payload_must_be_a_strict_json_object(service: TokenService, eddsa: KeySet, claims_text: str) -> None:
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": "2026-01-01"}
    assert reason_of(service, forge(header, claims_text, ed25519=raw_ed25519(eddsa))) == "malformed"


def test_issuer_and_type(service: TokenService, eddsa: KeySet) -> None:
    key = raw_ed25519(eddsa)
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": "2026-01-01"}
    assert reason_of(service, forge(header, good_claims(iss="someone-else"), ed25519=key)) == "wrong_issuer"
    assert reason_of(service, forge(header, good_claims(iss=None), ed25519=key)) == "wrong_issuer"
    assert reason_of(service, forge({**header, "typ": "JWT"}, good_claims(), ed25519=key)) == "wrong_type"
    assert reason_of(service, forge(header, good_claims(token_type="refresh"), ed25519=key)) == "wrong_type"
    assert reason_of(service, forge(header, good_claims(token_type=None), ed25519=key)) == "wrong_type"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJFZERTQSJ9.e30.c2ln=",
        "eyJhbGciOiJFZERTQSJ9=.e30.c2ln",
        "eyJhbGciOiJFZERTQSJ9.e30.c2l+",
        "eyJhbGciOiJFZERTQSJ9 .e30.c2ln",
        "éyJhbGciOiJFZERTQSJ9.e30.c2ln",
        "x.e30.c2ln",
        b"bytes.are.refused",
        None,
    ],
)
def test_shape(service: TokenService, token: Any) -> None:
    assert reason_of(service, token) == "malformed"


def test_shape_of_an_otherwise_valid_token(service: TokenService) -> None:
    token = issue(service)
    header, payload, signature = token.split(".")
    assert service.verify_access(token, audience="pandora-api")
    for mutated in (
        token + "=",
        f"{header}=.{payload}.{signature}",
        f"{header}.{payload}=.{signature}",
        f"{header}.{payload}.{signature}.",
        f"{header}.{payload}",
        f"{header}.{payload}.",
        f" {token}",
        f"{token}\n",
        token.replace("-", "+").replace("_", "/") if ("-" in token or "_" in token) else token + "+",
        token.encode("ascii"),
    ):
        assert reason_of(service, mutated) == "malformed", mutated


def test_size_limits(service: TokenService, eddsa: KeySet) -> None:
    key = raw_ed25519(eddsa)
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": "2026-01-01"}
    big = forge(header, good_claims(padding="p" * 6000), ed25519=key)
    assert len(big) > 8192
    assert reason_of(service, big) == "malformed"
    fits = forge(header, good_claims(padding="p" * 5000), ed25519=key)
    assert len(fits) <= 8192
    assert service.verify_access(fits, audience="pandora-api").sub == "user-1"
    long_header = {"alg": "EdDSA", "typ": "at+jwt", "kid": "k" * 500}
    assert reason_of(service, forge(long_header, good_claims(), ed25519=key)) == "malformed"


def test_expiry_is_strict(service: TokenService, clock: Clock) -> None:
    token = issue(service)
    clock.now = T0 + 899.999
    assert service.verify_access(token, audience="pandora-api")
    clock.now = T0 + 900
    assert reason_of(service, token) == "expired"
    clock.now = T0 + 900.001
    assert reason_of(service, token) == "expired"


def test_nbf_and_iat_may_be_30_seconds_ahead(service: TokenService, eddsa: KeySet, clock: Clock) -> None:
    token = issue(service)  # iat = nbf = T0
    clock.now = T0 - 30
    assert service.verify_access(token, audience="pandora-api")
    clock.now = T0 - 30.5
    assert reason_of(service, token) == "not_yet_valid"
    clock.now = T0
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": "2026-01-01"}
    future_iat = forge(header, good_claims(iat=int(T0) + 31), ed25519=raw_ed25519(eddsa))
    assert reason_of(service, future_iat) == "not_yet_valid"
    future_nbf = forge(header, good_claims(nbf=int(T0) + 31), ed25519=raw_ed25519(eddsa))
    assert reason_of(service, future_nbf) == "not_yet_valid"


def test_audience(service: TokenService) -> None:
    token = issue(service, audience="pandora-api")
    assert reason_of(service, token, audience="pandora-admin") == "wrong_audience"
    assert service.verify_access(token, audience=None).aud == "pandora-api"


# --- keys, JWKS and rotation ---------------------------------------------------------------------------


def write_key(directory: Path, kid: str) -> Ed25519PrivateKey:
    private = Ed25519PrivateKey.generate()
    (directory / f"{kid}.pem").write_text(pem_of(private))
    return private


def test_rotation_without_restart(tmp_path: Path, clock: Clock) -> None:
    write_key(tmp_path, "2026-01-01")
    ring = KeyRing(load_eddsa_keys_dir(tmp_path))
    watcher = KeyDirWatcher(tmp_path, ring)
    service = TokenService(ring, ISSUER, 900, clock=clock)
    old_token = issue(service)
    assert watcher.rescan() is False  # nothing changed

    # (1) add the new key without activating it
    (tmp_path / "active_kid").write_text("2026-01-01\n")
    write_key(tmp_path, "2026-03-01")
    assert watcher.rescan() is True
    assert [k["kid"] for k in jwks(ring.current)["keys"]] == ["2026-01-01", "2026-03-01"]
    assert json.loads(unb64(issue(service).split(".")[0]))["kid"] == "2026-01-01"

    # (3) activate it: new tokens use it, the old key still verifies
    (tmp_path / "active_kid").write_text("2026-03-01")
    assert watcher.rescan() is True
    new_token = issue(service)
    assert json.loads(unb64(new_token.split(".")[0]))["kid"] == "2026-03-01"
    assert [k["kid"] for k in jwks(ring.current)["keys"]] == ["2026-03-01", "2026-01-01"]
    assert service.verify_access(old_token, audience="pandora-api")
    assert service.verify_access(new_token, audience="pandora-api")

    # (4) remove the old key: its tokens fail
    (tmp_path / "2026-01-01.pem").unlink()
    assert watcher.rescan() is True
    assert reason_of(service, old_token) == "unknown_key"
    assert service.verify_access(new_token, audience="pandora-api")

    # bad material keeps the last good keys
    (tmp_path / "2026-06-01.pem").write_text("not a key")
    assert watcher.rescan() is False
    assert watcher.last_error is not None and "2026-06-01.pem" in watcher.last_error
    assert ring.current.active_kid == "2026-03-01"
    assert service.verify_access(new_token, audience="pandora-api")


def test_keys_dir_rules(tmp_path: Path) -> None:
    write_key(tmp_path, "2026-01-01")
    write_key(tmp_path, "2026-02-01")
    (tmp_path / "README").write_text("ignored")
    (tmp_path / ".hidden.pem").write_text("ignored")
    keyset = load_eddsa_keys_dir(tmp_path)
    assert keyset.active_kid == "2026-02-01"  # the greatest kid signs without an active_kid file
    assert set(keyset.keys) == {"2026-01-01", "2026-02-01"}
    assert keyset.algorithm == "EdDSA"

    (tmp_path / "active_kid").write_text("2025-12-01")
    with pytest.raises(KeyMaterialError, match="active_kid"):
        load_eddsa_keys_dir(tmp_path)
    (tmp_path / "active_kid").unlink()
    write_key(tmp_path, "bad kid")
    with pytest.raises(KeyMaterialError, match="bad kid"):
        load_eddsa_keys_dir(tmp_path)


@pytest.mark.parametrize(
    ("pem", "problem"),
    [
        ("garbage", "PKCS#8"),
        (pem_of(Ed448PrivateKey.generate()), "Ed25519"),
        (
            Ed25519PrivateKey.generate()
            .private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            )
            .decode(),
            "encrypted",
        ),
    ],
)
def test_bad_key_material(tmp_path: Path, pem: str, problem: str) -> None:
    with pytest.raises(KeyMaterialError, match=problem):
        load_eddsa_pem(pem)
    (tmp_path / "k1.pem").write_text(pem)
    with pytest.raises(KeyMaterialError, match=r"k1\.pem"):
        load_eddsa_keys_dir(tmp_path)


def test_missing_or_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="no signing key"):
        load_eddsa_keys_dir(tmp_path)
    with pytest.raises(KeyMaterialError, match="not a readable directory"):
        load_eddsa_keys_dir(tmp_path / "missing")


def test_pem_kid_defaults_to_the_thumbprint() -> None:
    private = Ed25519PrivateKey.generate()
    keyset = load_eddsa_pem(pem_of(private))
    assert keyset.active_kid == OKPKey.import_key(private.public_key()).thumbprint()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", keyset.active_kid)
    assert load_eddsa_pem(pem_of(private), kid="main").active_kid == "main"
    with pytest.raises(KeyMaterialError, match="kid"):
        load_eddsa_pem(pem_of(private), kid="no/slashes")


def test_mapping_loader_for_vault() -> None:
    keys = {"a": pem_of(Ed25519PrivateKey.generate()), "b": pem_of(Ed25519PrivateKey.generate())}
    assert load_eddsa_mapping(keys, None).active_kid == "b"
    assert load_eddsa_mapping(keys, "a").active_kid == "a"
    with pytest.raises(KeyMaterialError, match="missing"):
        load_eddsa_mapping(keys, "c")
    with pytest.raises(KeyMaterialError, match="no signing key"):
        load_eddsa_mapping({}, None)


def test_generate_dev_key_once(tmp_path: Path) -> None:
    first = generate_dev_key(tmp_path)
    files = list((tmp_path / "keys").glob("*.pem"))
    assert [f.stem for f in files] == [first.active_kid]
    assert os.stat(files[0]).st_mode & 0o777 == 0o600
    second = generate_dev_key(tmp_path)
    assert second.fingerprint() == first.fingerprint()
    assert len(list((tmp_path / "keys").glob("*.pem"))) == 1


def test_jwks_shape(eddsa: KeySet) -> None:
    document = jwks(eddsa)
    assert list(document) == ["keys"]
    (entry,) = document["keys"]
    assert set(entry) == {"kty", "crv", "x", "kid", "use", "alg"}
    assert (entry["kty"], entry["crv"], entry["kid"], entry["use"], entry["alg"]) == (
        "OKP",
        "Ed25519",
        "2026-01-01",
        "sig",
        "EdDSA",
    )
    public = raw_ed25519(eddsa).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert entry["x"] == b64(public)
    assert json.loads(json.dumps(document)) == document
    assert jwks(hs256_keyset(SECRET, "static-v1")) == {"keys": []}


def test_hs256_keyset_rules() -> None:
    with pytest.raises(KeyMaterialError, match="32"):
        hs256_keyset("x" * 31, "static-v1")
    with pytest.raises(KeyMaterialError, match="kid"):
        hs256_keyset(SECRET, "bad kid")
    assert hs256_keyset(SECRET, "static-v1").active.public_jwk is None


# --- opaque tokens -------------------------------------------------------------------------------------


def test_opaque_tokens() -> None:
    tokens = {new_opaque_token() for _ in range(50)}
    assert len(tokens) == 50
    for token, digest in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
        assert len(unb64(token)) == 32
        assert digest == hashlib.sha256(token.encode("ascii")).digest()
        assert hash_opaque_token(token) == digest
    assert len(hash_opaque_token("x" * 600 + "\ud800")) == 32  # any presented string hashes


def test_a_verified_token_is_remembered_until_it_expires(service: TokenService, clock: Clock) -> None:
    token = issue(service)
    first = service.verify_access(token, audience="pandora-api")
    assert service.verify_access(token, audience="pandora-api") is first  # remembered: no second signature check
    with pytest.raises(TokenInvalid) as wrong:
        service.verify_access(token, audience="pandora-admin")
    assert wrong.value.reason == "wrong_audience"
    clock.now += 901
    with pytest.raises(TokenInvalid) as expired:
        service.verify_access(token, audience="pandora-api")
    assert expired.value.reason == "expired"


def test_a_rotation_makes_remembered_tokens_verify_again(eddsa: KeySet, clock: Clock) -> None:
    ring = KeyRing(eddsa)
    service = TokenService(ring, ISSUER, 900, clock=clock)
    token = issue(service)
    service.verify_access(token, audience="pandora-api")
    ring.swap(load_eddsa_pem(pem_of(Ed25519PrivateKey.generate()), kid="2026-02-01"))  # the token's key is retired
    with pytest.raises(TokenInvalid) as retired:
        service.verify_access(token, audience="pandora-api")
    assert retired.value.reason == "unknown_key"


def test_a_tampered_copy_of_a_remembered_token_is_refused(service: TokenService) -> None:
    token = issue(service)
    service.verify_access(token, audience="pandora-api")
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    with pytest.raises(TokenInvalid):
        service.verify_access(forged, audience="pandora-api")
