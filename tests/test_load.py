"""A short load test of the app on 127.0.0.1 (benchmarks/bench_load.py is the long one, with the figures).

8 sessions x 5 requests at once (strategy switches and next-example), each answer checked against the labels of the
session's own dataset, example and strategy: no errors, no cross-talk. Then one session audits 3,000 conversations
while the others keep asking for token views: views keep finishing during the audit (it does not freeze them).
"""

import time

import pytest

from benchmarks.bench_load import (SAMPLES, Expected, Server, Session, _check, audit_dataset, percentile,
                                   run_sessions, views_during_audit)

SESSIONS, REQUESTS = 8, 5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("load") / "app.log") as s:
        yield s


@pytest.fixture(scope="module")
def sessions(server):
    from core.masking.engine import STRATEGIES

    expected = Expected()
    expected.warm(list(STRATEGIES))
    return [Session(server.url, k, expected, list(STRATEGIES)) for k in range(SESSIONS)]


def test_the_cross_talk_check_can_fail(sessions):
    """A session's answer checked against another session's dataset is reported (the check below has teeth)."""
    a = sessions[0]
    b = next(s for s in sessions if s.sample != a.sample)
    out = a.client.predict(api_name="/on_next")
    a.index = (a.index + 1) % a.exp.size(a.sample)
    own = a.exp.labels(a.sample, a.index, a.strategy)
    assert _check(out, own, a.index + 1, "a") is None
    assert "cross-talk" in _check(out, a.exp.labels(b.sample, 0, a.strategy), a.index + 1, "a")


def test_concurrent_sessions_get_their_own_answers(sessions):
    assert len({s.sample for s in sessions}) == len(SAMPLES)  # the sessions really differ
    stats, wall = run_sessions(sessions, REQUESTS, time_limit=240)
    assert stats.errors == [], stats.errors[:5]
    assert stats.requests == SESSIONS * REQUESTS and len(stats.latencies) == SESSIONS * REQUESTS
    print(f"\n{stats.requests} requests in {wall:.1f} s: {stats.requests / wall:.1f} req/s, "
          f"p95 {percentile(stats.latencies, 95) * 1000:.0f} ms")


def test_an_audit_does_not_freeze_other_sessions(server, sessions, tmp_path):
    data = audit_dataset(tmp_path / "audit.jsonl", 3000)
    t0 = time.monotonic()
    r = views_during_audit(server.url, sessions[:4], data, n_requests=40, time_limit=240)
    assert r["audit_ok"], r["audit_error"]
    assert r["errors"] == [], r["errors"][:5]
    # Token views kept finishing while the audit ran: at least one per second of audit, and none waited it out.
    assert r["views_during"] >= max(3, int(r["audit_s"])), r
    assert r["max_during"] < r["audit_s"] or r["audit_s"] < 1, r
    print(f"\naudit {r['audit_s']:.1f} s; {r['views_during']} views meanwhile, p95 {r['p95_during'] * 1000:.0f} ms "
          f"(phase {time.monotonic() - t0:.0f} s)")
