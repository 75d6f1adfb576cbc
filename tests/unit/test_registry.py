from __future__ import annotations

from sessions_app.registry import ACK_WINDOW, SessionManager
from tests.support.sessions import make_session


def test_register_and_unregister_are_idempotent():
    registry = SessionManager()
    session = make_session("u1", "s1")
    assert registry.register(session, max_per_user=5) == []
    assert registry.register(session, max_per_user=5) == []
    assert len(registry) == 1
    assert registry.user_count == 1
    assert registry.get("s1") is session

    assert registry.unregister(session) is True
    assert registry.unregister(session) is False
    assert len(registry) == 0
    assert registry.user_count == 0
    assert registry.get("s1") is None
    assert "u1" not in registry.users_of()


def test_unregister_ignores_a_different_session_with_the_same_id():
    registry = SessionManager()
    live = make_session("u1", "s1")
    registry.register(live, max_per_user=5)
    impostor = make_session("u1", "s1")
    assert registry.unregister(impostor) is False
    assert registry.get("s1") is live


def test_cap_evicts_oldest_first_across_several_evictions():
    registry = SessionManager()
    sessions = [make_session("u1", f"s{i}", at=1000.0 + i) for i in range(6)]
    assert registry.register(sessions[0], max_per_user=2) == []
    assert registry.register(sessions[1], max_per_user=2) == []
    assert registry.register(sessions[2], max_per_user=2) == [sessions[0]]
    assert registry.register(sessions[3], max_per_user=2) == [sessions[1]]
    assert registry.register(sessions[4], max_per_user=2) == [sessions[2]]
    assert list(registry.sessions_of(["u1"])) == [sessions[3], sessions[4]]
    assert registry.get("s0") is None
    assert len(registry) == 2
    # A lower cap evicts several at once, oldest first.
    registry.register(sessions[5], max_per_user=1)
    assert list(registry.sessions_of(["u1"])) == [sessions[5]]


def test_cap_evicts_several_in_order_when_the_cap_shrinks():
    registry = SessionManager()
    sessions = [make_session("u1", f"s{i}") for i in range(4)]
    for session in sessions[:3]:
        registry.register(session, max_per_user=5)
    evicted = registry.register(sessions[3], max_per_user=1)
    assert evicted == sessions[:3]
    assert registry.all_sessions() == [sessions[3]]


def test_cap_is_per_user():
    registry = SessionManager()
    a = make_session("a", "a1")
    b = make_session("b", "b1")
    registry.register(a, max_per_user=1)
    assert registry.register(b, max_per_user=1) == []
    assert registry.user_count == 2


def test_sessions_of_follows_the_given_user_order_and_skips_missing_users():
    registry = SessionManager()
    a1, a2 = make_session("a", "a1"), make_session("a", "a2")
    b1 = make_session("b", "b1")
    for session in (a1, b1, a2):
        registry.register(session, max_per_user=5)
    assert list(registry.sessions_of(["b", "nobody", "a"])) == [b1, a1, a2]
    assert list(registry.sessions_of(["nobody"])) == []
    assert list(registry.sessions_of([])) == []


def test_sessions_of_survives_closing_while_iterating():
    registry = SessionManager()
    a1, a2 = make_session("a", "a1"), make_session("a", "a2")
    registry.register(a1, max_per_user=5)
    registry.register(a2, max_per_user=5)
    seen = []
    for session in registry.sessions_of(["a"]):
        seen.append(session)
        registry.unregister(session)
    assert seen == [a1, a2]
    assert len(registry) == 0


def test_expired_uses_the_injected_clock_and_explicit_now():
    now = [1000.0]
    registry = SessionManager(clock=lambda: now[0])
    old = make_session("u1", "old", at=900.0)
    fresh = make_session("u1", "fresh", at=990.0)
    registry.register(old, max_per_user=5)
    registry.register(fresh, max_per_user=5)

    assert registry.expired(timeout_s=60) == [old]
    now[0] = 1051.0
    assert registry.expired(timeout_s=60) == [old, fresh]
    now[0] = 950.0
    assert registry.expired(timeout_s=60) == []
    # An explicit now wins over the clock.
    assert registry.expired(timeout_s=60, now=2000.0) == [old, fresh]
    # Exactly at the deadline is not expired yet.
    assert registry.expired(timeout_s=60, now=960.0) == []
    assert registry.expired(timeout_s=60, now=960.001) == [old]


def test_count_frame_refreshes_last_seen_for_text_frames_only():
    session = make_session("u1", "s1", at=100.0)
    assert session.count_frame(110.0, max_per_minute=10) is True
    assert session.last_seen == 110.0
    assert session.count_frame(120.0, max_per_minute=10, alive=False) is True
    assert session.last_seen == 110.0
    assert session.frames_in_window == 2


def test_count_frame_budget_per_minute_and_window_reset():
    session = make_session("u1", "s1", at=100.0)
    assert [session.count_frame(100.0 + i, max_per_minute=3) for i in range(4)] == [
        True, True, True, False,
    ]
    # Still inside the window that started at 100.0.
    assert session.count_frame(159.9, max_per_minute=3) is False
    # 60 s after the window started, the budget is fresh.
    assert session.count_frame(160.0, max_per_minute=3) is True
    assert session.window_started == 160.0
    assert session.frames_in_window == 1
    assert session.count_frame(161.0, max_per_minute=3) is True
    assert session.count_frame(162.0, max_per_minute=3) is True
    assert session.count_frame(163.0, max_per_minute=3) is False


def test_binary_frames_count_against_the_budget():
    session = make_session("u1", "s1", at=100.0)
    assert session.count_frame(101.0, max_per_minute=1, alive=False) is True
    assert session.count_frame(102.0, max_per_minute=1, alive=False) is False
    assert session.last_seen == 100.0


def test_a_connection_acks_each_push_it_received_once():
    session = make_session("u1", "s1")
    assert session.take_ack("p1") is False  # never received
    session.received("p1")
    session.received("p2")
    assert session.take_ack("p2") is True
    assert session.take_ack("p2") is False  # a repeat
    assert session.take_ack("p1") is True
    assert session.take_ack("p3") is False


def test_only_the_newest_ack_window_pushes_can_be_acked():
    session = make_session("u1", "s1")
    for i in range(ACK_WINDOW + 10):
        session.received(f"p{i}")
    assert session.unacked is not None and len(session.unacked) == ACK_WINDOW
    assert session.take_ack("p9") is False  # pushed out of the window
    assert session.take_ack("p10") is True
    assert session.take_ack(f"p{ACK_WINDOW + 9}") is True
