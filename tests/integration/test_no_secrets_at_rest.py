"""Nothing in the events table is a password, a hash, a token, or personal data in clear."""

from __future__ import annotations

import psycopg
import pytest

from pandora_users.commands import account, admin, links, registration
from pandora_users.commands import authentication as auth
from pandora_users.commands.authentication import LoginAttempt, RefreshAttempt
from pandora_users.commands.base import WriteSide
from pandora_users.domain import events as ev
from pandora_users.domain.context import Context
from pandora_users.domain.errors import InvalidRefreshToken
from tests.integration.test_account_and_admin import NEW_PASSWORD, _link_token
from tests.integration.test_registration import PASSWORD

EMAIL, FIRST, LAST = "zelda.quux@example.org", "Zelda", "Quuxington"
IP, UA = "203.0.113.77", "Mozilla/5.0 (PandoraTest; secret-agent)"


async def test_raw_events_hold_no_secret_or_personal_data(write_side: WriteSide, database_url: str) -> None:
    meta = Context(metadata={"ip_address": IP, "user_agent": UA, "request_id": "req-1"})
    grant = await registration.register(
        write_side, registration.Registration(EMAIL, PASSWORD, FIRST, LAST, IP, UA), meta
    )
    secrets = [PASSWORD, NEW_PASSWORD, grant.refresh_token, EMAIL, FIRST, LAST, IP, UA, "zelda.quux"]
    secrets.append(_link_token(write_side, ev.LinkEmailVerificationRequested.TOPIC))
    login = await auth.log_in(write_side, LoginAttempt(EMAIL, PASSWORD, ip_address=IP, user_agent=UA), meta)
    refreshed = await auth.refresh(write_side, RefreshAttempt(login.grant.refresh_token), meta)
    secrets += [login.grant.refresh_token, refreshed.refresh_token]
    with pytest.raises(InvalidRefreshToken):  # reuse: recorded with the presenting IP and User-Agent
        await auth.refresh(write_side, RefreshAttempt(login.grant.refresh_token, ip_address=IP, user_agent=UA), meta)
    await links.forgot_password(write_side, EMAIL, meta)
    reset_token = _link_token(write_side, ev.LinkPasswordResetRequested.TOPIC)
    secrets.append(reset_token)
    await links.reset_password(write_side, reset_token, NEW_PASSWORD, meta)
    await account.update_profile(
        write_side, grant.user.id, first_name="Zeldina", last_name=None, if_match=None, ctx=meta
    )
    secrets.append("Zeldina")
    with psycopg.connect(database_url) as conn:
        secrets += [r[0] for r in conn.execute("SELECT password_hash FROM credentials")]
        secrets += [bytes(r[0]).hex() for r in conn.execute("SELECT token_hash FROM refresh_tokens")]
        rows = conn.execute("SELECT originator_id::text, topic, state FROM pandora_events").fetchall()
    await admin.erase(write_side, grant.user.id, if_match=None, ctx=meta)
    raw = "\n".join(f"{r[0]} {r[1]} {bytes(r[2]).decode()}" for r in rows).lower()
    assert len(rows) >= 10
    leaked = [s for s in secrets if s.lower() in raw]
    assert leaked == []
