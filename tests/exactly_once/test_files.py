"""Exactly once: a backfill killed right before and right after each file rename and the swap of the published
copy, then rerun (conftest.py); and an outbox that cannot be written."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.exactly_once.conftest import FILES, PROJECT, backfill_command, rerun_equals_reference
from transforms.warehouse.db import connect

pytestmark = pytest.mark.flow


@pytest.mark.parametrize("point", FILES)
def test_killed_at_each_rename_and_swap_the_rerun_equals_an_uninterrupted_run(point, killed_then_rerun):
    killed_then_rerun(point)


def test_an_outbox_that_cannot_be_written_fails_the_run_with_one_line_and_owes_the_files(june, reference, tmp_path,
                                                                                        cli_env):
    home = tmp_path / "home"
    shutil.copytree(june, home)
    blocker = home / "outbox" / "sms" / "daily" / "20260731"
    blocker.write_text("not a folder")  # even root cannot write the night's file below a file
    failed = subprocess.run(backfill_command(home), env=cli_env, capture_output=True, text=True, cwd=PROJECT)
    assert failed.returncode == 1
    first, hint = failed.stderr.splitlines()
    assert first.startswith("tierflow backfill: error: ") and "20260731" in first
    assert hint == "  (set TIERFLOW_DEBUG=1 for the traceback)"
    con = connect(home, read_only=True)
    try:
        owed = con.execute("SELECT target, run_id FROM ops.owed WHERE effect = 'OUTBOX'").fetchall()
        [run_id] = [r for target, r in owed if target == "sms/daily/20260731/lost.jsonl"]  # owed until written
        assert (home / "ops" / "owed" / run_id / "sms/daily/20260731/lost.jsonl").is_file()  # its bytes wait
        assert con.execute("SELECT status FROM ops.run_ledger WHERE status = 'FAILED'").fetchall()
    finally:
        con.close()
    blocker.unlink()
    rerun_equals_reference(home, reference)
