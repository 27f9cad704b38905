"""The password policy of SPEC §7.1."""

from __future__ import annotations

import unicodedata
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pandora_users.domain.errors import FieldError, InvalidRequest, WeakPassword
from pandora_users.security.passwords import (
    Blocklist,
    check_password_policy,
    is_repetitive_or_sequential,
    normalize_password,
)

EMAIL = "jane.doe@example.com"


def violation(password: str, **overrides: object) -> str | None:
    """The rule broken by `password` (None when the policy accepts it)."""
    kwargs: dict[str, object] = {
        "field": "password",
        "email": EMAIL,
        "min_length": 8,
        "max_length": 128,
        "blocklist": Blocklist.bundled(),
    }
    kwargs.update(overrides)
    try:
        check_password_policy(password, **kwargs)  # type: ignore[arg-type]
    except WeakPassword as exc:
        assert exc.code == "weak_password"
        assert len(exc.details) == 1
        assert exc.details[0].field == kwargs["field"]
        return exc.details[0].message
    return None


def test_normalize_is_nfkc_without_trimming() -> None:
    assert normalize_password("  \uff50\uff41\uff53\uff53  ") == "  pass  "
    assert normalize_password("e\u0301") == "\u00e9"
    assert normalize_password("ﬁ") == "fi"


def test_a_good_password_passes() -> None:
    assert violation("correct horse battery staple") is None
    assert violation("Tr0ub4dor&3x") is None


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("Xk3#pq7", "too_short"),
        ("", "too_short"),
        ("x" * 64 + "Y" * 65, "too_long"),
        ("ü" * 120 + "é" * 8 + "ab", "too_long"),
        ("password", "common_password"),
        ("PassWord1", "common_password"),
        (
            "\uff30\uff21\uff33\uff33\uff37\uff2f\uff32\uff24",
            "common_password",
        ),  # fullwidth: NFKC + case fold
        ("iloveyou", "common_password"),
        ("jane.doe@example.com", "contains_personal_or_context_data"),
        ("JANE.DOE@EXAMPLE.COM", "contains_personal_or_context_data"),
        ("Jane.Doe", "contains_personal_or_context_data"),
        ("my-PandoraPass!", "contains_personal_or_context_data"),
        ("\uff50\uff41\uff4e\uff44\uff4f\uff52\uff412026xyz", "contains_personal_or_context_data"),
        ("aaaaaaaaaa", "repetitive_or_sequential"),
        ("€€€€€€€€", "repetitive_or_sequential"),
        ("12345678", "repetitive_or_sequential"),
        ("3456789012", "repetitive_or_sequential"),
        ("87654321", "repetitive_or_sequential"),
        ("abcdefgh", "repetitive_or_sequential"),
        ("ABCDEFGHIJ", "repetitive_or_sequential"),
        ("zyxwvutsrq", "repetitive_or_sequential"),
    ],
)
def test_each_rule(password: str, rule: str) -> None:
    assert violation(password) == rule


def test_too_long_in_utf8_bytes_even_within_the_code_point_limit() -> None:
    password = "\U0001f600" * 129  # 129 code points
    assert violation(password, max_length=256) == "too_long"
    password = "\U0001f600" * 127 + "xy"  # 129 code points, 510 bytes
    assert violation(password, max_length=256) is None
    password = "\U0001f600" * 128 + "y"  # 129 code points, 513 bytes
    assert violation(password, max_length=256) == "too_long"


def test_length_is_counted_after_nfkc() -> None:
    # U+FB03 (ffi ligature) expands to three code points: 3 ligatures become 9 characters.
    assert violation("\ufb03\ufb03\ufb03") is None
    assert violation("\ufb03\ufb03") == "too_short"


def test_configured_limits() -> None:
    assert violation("Xk3#pq7wz", min_length=15) == "too_short"
    assert violation("Xk3#pq7wzLm9!e2", max_length=12) == "too_long"


def test_same_as_current() -> None:
    assert violation("Tr0ub4dor&3x", current_password="Tr0ub4dor&3x") == "same_as_current"
    assert violation("Tr0ub4dor&3x", current_password="tr0ub4dor&3x") is None
    # Compared after NFKC on both sides.
    assert violation("Tr0ub4dor&3\uff58", current_password="Tr0ub4dor&3x") == "same_as_current"


def test_field_is_named() -> None:
    with pytest.raises(WeakPassword) as caught:
        check_password_policy(
            "short",
            field="new_password",
            email=None,
            min_length=8,
            max_length=128,
            blocklist=Blocklist.bundled(),
        )
    assert caught.value.details == [FieldError("new_password", "too_short")]
    assert caught.value.http_status == 400


def test_nul_is_an_invalid_request_not_a_weak_password() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_password_policy(
            "abc\x00defghij",
            field="password",
            email=None,
            min_length=8,
            max_length=128,
            blocklist=Blocklist.bundled(),
        )
    assert caught.value.details[0].field == "password"


def test_without_email_only_pandora_is_context() -> None:
    assert violation("jane.doe", email=None) is None
    assert violation("pandora!X9", email=None) == "contains_personal_or_context_data"


@pytest.mark.parametrize("password", ["12345679", "abcdefgz", "aab", "a1b2c3d4", "0246813579", "Zyxwvutz"])
def test_not_sequential(password: str) -> None:
    assert not is_repetitive_or_sequential(password)


def test_bundled_blocklist_size_and_lengths() -> None:
    text = resources.files("pandora_users.security").joinpath("data", "common-passwords.txt").read_text("utf-8")
    lines = text.splitlines()
    assert len(lines) >= 10_000
    assert len(set(lines)) == len(lines)
    for entry in lines:
        assert 8 <= len(entry) <= 128, entry
        assert len(entry.encode("utf-8")) <= 512
        assert "\x00" not in entry
        assert entry == unicodedata.normalize("NFKC", entry.casefold())
    assert len(Blocklist.bundled()) == len(lines)


def test_bundled_blocklist_is_cached() -> None:
    assert Blocklist.bundled() is Blocklist.bundled()
    assert Blocklist.load() is Blocklist.bundled()


def test_extra_blocklist_file(tmp_path: Path) -> None:
    extra = tmp_path / "extra.txt"
    extra.write_text("CorrectHorse99\r\n\nzebra-crossing-7\n", encoding="utf-8")
    blocklist = Blocklist.load(extra)
    assert "correcthorse99" in blocklist
    assert "ZEBRA-CROSSING-7" in blocklist
    assert "password" in blocklist  # the bundled entries stay
    assert "" not in blocklist
    assert violation("correctHORSE99", blocklist=blocklist) == "common_password"
    assert violation("correctHORSE99") is None


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(min_size=0, max_size=160),
        st.sampled_from(sorted(Blocklist.bundled().entries)[:500]),
        st.text(alphabet="ab12AB", min_size=6, max_size=12),
    )
)
def test_property_accepted_passwords_meet_the_policy(password: str) -> None:
    try:
        check_password_policy(
            password,
            field="password",
            email=EMAIL,
            min_length=8,
            max_length=128,
            blocklist=Blocklist.bundled(),
        )
    except (WeakPassword, InvalidRequest):
        return
    normalized = normalize_password(password)
    assert 8 <= len(normalized) <= 128
    assert len(normalized.encode("utf-8", "surrogatepass")) <= 512
    assert normalized not in Blocklist.bundled()
    assert "\x00" not in normalized
