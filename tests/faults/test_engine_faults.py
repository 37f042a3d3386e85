"""A build against a server that fails on purpose (500, 429 + Retry-After, timeouts, truncated JSON, dropped
connections) completes: rows whose faults are transient succeed after retries, rows that always fail are
quarantined with the reason, and nothing hangs (the subprocess has a deadline)."""

from lendata import store as st
from tests.faults.fault_server import MODES, FaultServer
from tests.faults.harness import DATASET, command, run, write_instructions


def test_faulty_engine_server_gives_failed_rows_with_reasons_and_no_hang(tmp_path):
    n = 60
    qa = write_instructions(tmp_path / "qa.jsonl", n)
    with FaultServer(transient_share=0.5, permanent_share=0.1, transient=2, stall=1.5) as server:
        report = run(command(tmp_path / "s", qa, server.url, concurrency=4, retries=3, timeout=1.0), timeout=240)
        faults, requests = dict(server.faults), server.requests
        always = {k for k in server.per_key if server.fault_for(k, 10**6)}
    assert set(faults) == set(MODES), faults  # every kind of fault was injected
    assert 0 < len(always) < n and report["quarantined"] == len(always) and report["rows"] == n - len(always)
    v = st.open_version(tmp_path / "s", DATASET)
    failed = v.read("quarantine").to_pylist()
    assert all(q["stage"] == "generate" and q["reason"].startswith("gave up after 4 attempts; last error:")
               for q in failed)
    reasons = " ".join(q["reason"] for q in failed)
    assert "HTTP 500" in reasons or "HTTP 429" in reasons or "timed out" in reasons or "connection" in reasons
    # one successful request per kept row, plus one per injected fault (retried, or the last of a failed row)
    assert requests == (n - len(always)) + sum(faults.values())
