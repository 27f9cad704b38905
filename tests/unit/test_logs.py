"""Log redaction (SPEC §7.9): sensitive field names, control characters, JSON shape."""

from __future__ import annotations

import json

import pytest
from loguru import logger

from pandora_users.logs import REDACTED, configure, is_sensitive, redact


@pytest.mark.parametrize(
    ("name", "sensitive"),
    [
        ("password", True),
        ("new_password", True),
        ("refresh_token", True),
        ("refresh.token", True),
        ("X-Auth-Token", True),
        ("authorization", True),
        ("client_secret", True),
        ("api_key", True),
        ("X-API-KEY", True),
        ("private_key_pem", True),
        ("set-cookie", True),
        ("credentials", False),
        ("credential", True),
        ("key_length", False),
        ("tokenizer", False),
        ("user_id", False),
        ("email", False),
    ],
)
def test_sensitive_names(name: str, sensitive: bool) -> None:
    assert is_sensitive(name) is sensitive


def test_redact_nested_and_escape() -> None:
    clean = redact({"headers": {"Authorization": "Bearer abc"}, "note": "a\nb", "count": 3})
    assert clean == {"headers": {"Authorization": REDACTED}, "note": "a\\x0ab", "count": 3}


def test_json_lines_never_contain_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    configure(level="info", fmt="json", env="test")
    try:
        logger.bind(password="hunter2-secret", access_token="eyJ.secret", user_id="u-1").info("forged\nline")
    finally:
        configure(level="warning", fmt="console", env="test")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    doc = json.loads(out[0])
    assert doc["password"] == REDACTED and doc["access_token"] == REDACTED and doc["user_id"] == "u-1"
    assert doc["message"] == "forged\\x0aline" and doc["service"] == "pandora-users" and doc["env"] == "test"
    assert "hunter2" not in out[0] and "eyJ.secret" not in out[0]
