"""Hypothesis state machines for the user and session aggregates.

Random command sequences must keep the invariants: versions grow by exactly one per event, replaying the
emitted events gives the live state, erased is terminal, and a model of the expected state agrees.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pandora_users.domain import session as s
from pandora_users.domain import user as u
from pandora_users.domain.errors import DomainError, UserErased
from pandora_users.domain.events import ERASED, DomainEvent
from tests.unit.given import T0, ctx

NAMES = st.sampled_from(["Ann", "Bob", "Zoë", "Li"])


class UserMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.minute = 0
        first = u.register(
            uuid.uuid4(), email="ann@example.com", first_name="Ann", last_name="Lee", role="user", ctx=ctx()
        )
        self.events: list[DomainEvent] = [first]
        self.user = u.apply(None, first)
        self.model = {"kyc": "pending", "role": "user", "deleted": False, "erased": False, "first": "Ann"}

    def _decide(self, events: list[DomainEvent]) -> None:
        for event in events:
            assert event.originator_version == self.user.version + 1
            self.user = u.apply(self.user, event)
            self.events.append(event)

    def _ctx(self):  # type: ignore[no-untyped-def]
        self.minute += 1
        return ctx(self.minute)

    @rule(status=st.sampled_from(u.KYC_STATUSES))
    def admin_kyc(self, status: str) -> None:
        if self.model["erased"] or self.model["deleted"]:
            return
        before = len(self.events)
        self._decide(u.change_kyc(self.user, status, self_service=False, ctx=self._ctx()))
        assert (len(self.events) - before) == (0 if status == self.model["kyc"] else 1)
        self.model["kyc"] = status

    @rule()
    def resubmit(self) -> None:
        try:
            self._decide(u.change_kyc(self.user, "pending", self_service=True, ctx=self._ctx()))
        except DomainError:
            assert self.model["kyc"] != "rejected"
        else:
            assert self.model["kyc"] == "rejected"
            self.model["kyc"] = "pending"

    @rule(role=st.sampled_from(u.ROLES))
    def role(self, role: str) -> None:
        if not self.model["erased"]:
            self._decide(u.change_role(self.user, role, ctx=self._ctx()))
            self.model["role"] = role

    @rule(first=NAMES)
    def rename(self, first: str) -> None:
        if not self.model["erased"]:
            self._decide(u.update_profile(self.user, first_name=first, last_name=None, ctx=self._ctx()))
            self.model["first"] = first

    @rule()
    def delete(self) -> None:
        self._decide(u.delete(self.user, ctx=self._ctx()))
        if not self.model["erased"]:
            self.model["deleted"] = True

    @rule()
    def restore(self) -> None:
        try:
            self._decide(u.restore(self.user, ctx=self._ctx()))
        except UserErased:
            assert self.model["erased"]
        else:
            self.model["deleted"] = False

    @precondition(lambda self: len(self.events) > 3)
    @rule()
    def erase(self) -> None:
        self._decide(u.erase(self.user, ctx=self._ctx()))
        self.model["erased"] = True

    @rule(minutes=st.integers(1, 30))
    def lock(self, minutes: int) -> None:
        c = self._ctx()
        self._decide(u.lock(self.user, until=c.now + timedelta(minutes=minutes), failed_attempts=10, ctx=c))

    @rule()
    def unlock(self) -> None:
        self._decide(u.unlock(self.user, method="admin", ctx=self._ctx()))

    @invariant()
    def replay_equals_live_state(self) -> None:
        assert u.project(None, self.events) == self.user
        assert [e.originator_version for e in self.events] == list(range(1, len(self.events) + 1))

    @invariant()
    def model_agrees(self) -> None:
        assert self.user.kyc_status == self.model["kyc"]
        assert self.user.role == self.model["role"]
        assert (self.user.erased_at is not None) == self.model["erased"]
        assert self.user.is_active == (not self.model["deleted"] and not self.model["erased"])
        assert self.user.first_name == (ERASED if self.model["erased"] else self.model["first"])


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        first = s.log_in(
            uuid.uuid4(),
            user_id=uuid.uuid4(),
            email="a@b.co",
            audience="pandora-api",
            expires_at=T0 + timedelta(days=7),
            ip_address=None,
            user_agent=None,
            ctx=ctx(),
        )
        self.events: list[DomainEvent] = [first]
        self.session = s.apply(None, first)
        self.terminal = 0

    def _decide(self, events: list[DomainEvent]) -> None:
        for event in events:
            assert event.originator_version == self.session.version + 1
            self.session = s.apply(self.session, event)
            self.events.append(event)

    @rule()
    def log_out(self) -> None:
        events = s.log_out(self.session, ctx=ctx(1))
        self.terminal += len(events)
        self._decide(events)

    @rule(reason=st.sampled_from(sorted(s.REVOKE_REASONS)))
    def revoke(self, reason: str) -> None:
        events = s.revoke(self.session, reason, ctx=ctx(1))
        self.terminal += len(events)
        self._decide(events)

    @rule()
    def reuse(self) -> None:
        events = s.detect_reuse(self.session, ip_address="192.0.2.1", user_agent="ua", ctx=ctx(1))
        self.terminal += sum(1 for e in events if type(e).__name__ == "SessionRevoked")
        self._decide(events)

    @invariant()
    def at_most_one_terminal_event(self) -> None:
        assert self.terminal <= 1
        assert (self.session.ended_at is not None) == (self.terminal == 1)
        assert s.project(None, self.events) == self.session


TestUserMachine = UserMachine.TestCase
TestUserMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestSessionMachine = SessionMachine.TestCase
TestSessionMachine.settings = settings(max_examples=40, stateful_step_count=10, deadline=None)
