"""The circuit breaker through the monthly task: blocked and recorded as FAILED, then accepted with a reason
that the run ledger keeps (the task's function is called directly: no Prefect server needed)."""
from __future__ import annotations

import json

import pytest

from flows.pipeline import RunFailed, grade_month
from tests.test_monthly_golden import graded_golden


def test_mass_change_blocked_then_accepted_with_a_reason(tmp_path):
    con, _ = graded_golden(tmp_path)
    con.close()
    # July: DOWNGRADE D + LOST G = 2 of 11 rated in June = 18% > 5%
    with pytest.raises(RunFailed, match="circuit_breaker"):
        grade_month.fn(str(tmp_path), "2026-07")
    assert not (tmp_path / "outbox" / "boss" / "202607").exists()   # nothing written for a failed run
    line = grade_month.fn(str(tmp_path), "2026-07", accept_reason="designation review, approved by ops")
    assert line.startswith("2026-07: graded 14 subscribers")  # S(July): 15 less G
    from transforms.warehouse.db import connect
    con = connect(tmp_path)
    rows = con.execute("SELECT status, checks FROM ops.run_ledger WHERE flow = 'monthly' AND period = '2026-07' "
                       "ORDER BY started_at").fetchall()
    con.close()
    assert [r[0] for r in rows] == ["FAILED", "SUCCESS"]
    assert json.loads(rows[0][1])["failed_gate"]["gate"] == "circuit_breaker"
    assert json.loads(rows[1][1])["accepted_mass_change"] == "designation review, approved by ops"
    assert (tmp_path / "outbox" / "boss" / "202607" / "GRADE_CHG_202607.chk").exists()
