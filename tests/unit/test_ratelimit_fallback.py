"""The in-memory fallback windows against a naive model, the decision headers and the warning throttle."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from api.ratelimit import Decision, Limit, MemoryWindows, WarnEvery

LIMITS = (
    Limit("login-ip", "10.0.0.1", 2, 1.0, True),
    Limit("login-email", "a@example.com", 3, 2.0, True),
    Limit("register", "10.0.0.1", 1, 0.5, True),
    Limit("login-ip", "10.0.0.2", 2, 1.0, True),
)

steps = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=6).map(lambda q: q * 0.25),  # exact binary fractions: no float fuzz
        st.sets(st.integers(min_value=0, max_value=len(LIMITS) - 1), min_size=1),
    ),
    max_size=60,
)


class Model:
    """The obvious definition: a request is allowed when every limit has fewer than `limit` accepted
    requests in (now - window, now]; an allowed request is recorded against each of its limits."""

    def __init__(self) -> None:
        self.accepted: dict[tuple[str, str], list[float]] = {}

    def hit(self, limits: list[Limit], now: float) -> tuple[bool, int]:
        def live(limit: Limit) -> int:
            return sum(1 for t in self.accepted.get((limit.name, limit.key), []) if t > now - limit.window)

        allowed = all(live(limit) < limit.limit for limit in limits)
        if allowed:
            for slot in {(limit.name, limit.key) for limit in limits}:
                self.accepted.setdefault(slot, []).append(now)
            return True, min(limit.limit - live(limit) for limit in limits)
        return False, 0


@settings(max_examples=300, deadline=None)
@given(steps)
def test_memory_windows_match_the_model(sequence: list[tuple[float, set[int]]]) -> None:
    windows, model, now = MemoryWindows(), Model(), 1000.0
    for dt, chosen in sequence:
        now += dt
        limits = [LIMITS[i] for i in sorted(chosen)]
        decision = windows.hit(limits, now)
        allowed, remaining = model.hit(limits, now)
        assert decision.allowed == allowed
        assert decision.remaining == remaining
        if not allowed:
            assert decision.retry_after >= 1 and decision.refused_by is not None
            assert decision.reset >= now


def test_retry_after_is_when_a_slot_frees() -> None:
    windows, limit = MemoryWindows(), Limit("verification", "u1", 2, 10.0, True)
    windows.hit([limit], 100.0)
    windows.hit([limit], 104.0)
    refused = windows.hit([limit], 105.0)
    assert not refused.allowed and refused.retry_after == 5 and refused.reset == 110
    assert not windows.hit([limit], 109.9).allowed
    assert windows.hit([limit], 110.0).allowed  # the entry of t=100 has left (window is (now-10, now])


def test_memory_stays_bounded() -> None:
    windows = MemoryWindows(max_keys=100)
    for i in range(1000):
        windows.hit([Limit("ip", f"10.0.{i // 256}.{i % 256}", 5, 60.0, True)], 1000.0)
    assert len(windows) <= 100


def test_headers_of_refusal_and_of_no_limit() -> None:
    refused = Decision(allowed=False, limit=5, remaining=0, reset=1700000060, retry_after=7, refused_by="login-ip")
    assert refused.headers() == {
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "1700000060",
        "Retry-After": "7",
    }
    assert MemoryWindows().hit([], 0.0).headers() == {}


def test_warning_at_most_once_per_period() -> None:
    now = [0.0]
    warn = WarnEvery(30.0, clock=lambda: now[0])
    fired = []
    for t in (0.0, 1.0, 29.9, 30.0, 45.0, 60.5):
        now[0] = t
        fired.append(warn("redis down"))
    assert fired == [True, False, False, True, False, True]


def test_a_refusal_describes_the_limit_that_frees_last() -> None:
    windows = MemoryWindows()
    short, long = Limit("login-ip", "10.0.0.1", 1, 10.0, True), Limit("login-email", "a@example.com", 1, 100.0, True)
    assert windows.hit([short, long], 0.0).allowed
    refused = windows.hit([short, long], 1.0)
    assert (refused.refused_by, refused.retry_after, refused.limit, refused.reset) == ("login-email", 99, 1, 100)
    allowed = windows.hit([short], 10.0)
    assert allowed.allowed and allowed.reset == 20
