"""Quick checks of the benchmark's own pieces (not part of the project's test suite, which collects tests/ only):

    .venv/bin/pytest -q bench/test_bench.py

The province the benchmark generates has no overrides and no prior-year points, so the three baselines are
checked here on hand-made inputs that reach every six-star rule and its edges, against tiers worked out by
hand from rules.md.
"""
from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import pytest

from bench import homes, ledger, report
from bench.tiers import compare_tiers

MONTH = "2025-12"
# subs_id: (brand, subs_type, status, open_date, realname, vip, sum6 of M-5..M-1, BILL_M rows, two-way
#           suspensions in the window, prior-year points, expected tier)
CASES = {
    "CANCELLED": ("MZONE", "PERSONAL", "CANCELLED", date(2015, 1, 1), True, True, 500_000, [], 0, 0, "UNRATED"),
    "IOT": ("MZONE", "IOT", "NORMAL", date(2015, 1, 1), True, False, 500_000, [], 0, 0, "UNRATED"),
    "NOREALNAME": ("MZONE", "PERSONAL", "NORMAL", date(2015, 1, 1), False, False, 500_000, [], 0, 0, "UNRATED"),
    "TENURE5": ("MZONE", "PERSONAL", "NORMAL", date(2025, 8, 31), True, False, 500_000, [], 0, 0, "UNRATED"),
    "TENURE6": ("MZONE", "PERSONAL", "NORMAL", date(2025, 7, 1), True, False, 0, [], 0, 0, "STAR1"),
    "VIP": ("EASYOWN", "PERSONAL", "SUSPENDED", date(2015, 1, 1), True, True, 0, [], 0, 0, "STAR6"),
    "POINTS": ("GOTONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, 0, [], 0, 30_000, "STAR6"),
    "POINTSLOW": ("GOTONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, 0, [], 0, 29_999, "STAR4"),
    "AVG300": ("MZONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, 170_000,
               [("VOICE", 10_000)], 0, 0, "STAR5"),
    "AVG300LESS1": ("MZONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, 170_000,
                    [("VOICE", 10_000), ("ADJUST", -1)], 0, 0, "STAR4"),
    "AVG150LESS1": ("MZONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, 89_999, [], 0, 0, "STAR3"),
    "AVG80": ("MZONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, 48_000, [], 0, 0, "STAR3"),
    "AVG80LESS1": ("MZONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, 47_999, [], 0, 0, "STAR2"),
    "AVG30": ("MZONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, 0, [("DATA", 18_000)], 0, 0, "STAR2"),
    "GIFTONLY": ("MZONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, 0,
                 [("GIFT", 900_000), ("DEPOSIT", 900_000)], 0, 0, "STAR1"),
    "CAPPED": ("MZONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, 400_000, [], 3, 0, "STAR3"),
    "CAPPEDVIP": ("MZONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, True, 0, [], 3, 0, "STAR3"),
    "TWOSUSP": ("GOTONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, 0, [], 2, 0, "STAR4"),
    "CAPNOEFFECT": ("MZONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, 20_000, [], 5, 0, "STAR2"),
    "OVERRIDE": ("MZONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, 0, [], 4, 0, "STAR5"),
    "OVERRIDEINELIGIBLE": ("MZONE", "IOT", "NORMAL", date(2015, 1, 1), True, False, 0, [], 0, 0, "UNRATED"),
    "REVOKED": ("MZONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, 0, [], 0, 0, "STAR1"),
    "OTHERMONTH": ("MZONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, 0, [], 0, 0, "STAR1"),
}


def _build_inputs(folder: Path) -> tuple[Path, Path]:
    from transforms.warehouse.db import SCHEMA_DDL  # the pipeline's schema: the baselines read these tables
    warehouse, bill = folder / "inputs.duckdb", folder / "BILL_202512.dat"
    con = duckdb.connect(str(warehouse))
    con.execute(SCHEMA_DDL)
    snapshot = date(2025, 12, 31)
    con.execute("INSERT INTO ops.snapshot VALUES (?, 'ACCT_20251231.dat', ?)", [snapshot, len(CASES)])
    bill_lines = []
    for n, (subs, (brand, kind, status, opened, realname, vip, earlier, rows, susp, points, _)) in enumerate(
            CASES.items()):
        _history(con, subs, brand, kind, status, opened, realname, vip, date(2025, 11, 30), None, n)
        months = [date(2025, m, 1) for m in range(7, 12)]
        for month, share in zip(months, _split(earlier, len(months))):
            con.execute("INSERT INTO mart.subscriber_month (month, subs_id, cons_fen, rent_fen, voice_fen, data_fen,"
                        " sms_fen, roam_fen, vas_fen, discount_fen, adjust_fen, gift_fen, deposit_fen) "
                        "VALUES (?, ?, ?, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)", [month, subs, share])
        bill_lines += [f"{subs}|202512|{item}|{amount}" for item, amount in rows]
        for k in range(susp):
            con.execute("INSERT INTO raw.susp VALUES ('SUSP_20250605.dat', ?, ?, ?, TIMESTAMP '2025-06-05 14:00:00', "
                        "'ARREARS_TWOWAY')", [k + 1, f"E{subs}{k}", subs])
        if points:
            con.execute("INSERT INTO staging.points_lot VALUES (?, DATE '2024-12-01', ?)", [subs, points])
    _noise(con)
    _overrides(con)
    con.close()
    bill.write_text("\n".join(bill_lines) + "\n")
    return warehouse, bill


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def _history(con, subs, brand, kind, status, opened, realname, vip, valid_from, valid_to, line):
    con.execute("INSERT INTO raw.subscriber_history VALUES (?, '13800000000', 'C1', '王伟', '1', ?, ?, ?, ?, NULL, "
                "?, false, ?, '4110', NULL, ?, ?, 'ACCT.dat', ?)",
                [subs, brand, kind, status, opened, realname, vip, valid_from, valid_to, line])


def _noise(con) -> None:
    """What must not count: an old version, a vanished subscriber, months and events outside the windows."""
    _history(con, "VIP", "EASYOWN", "PERSONAL", "NORMAL", date(2015, 1, 1), True, False, date(2025, 1, 31),
             date(2025, 11, 30), 99)  # the VIP's earlier version, without the flag
    _history(con, "GONE", "MZONE", "PERSONAL", "NORMAL", date(2015, 1, 1), True, True, date(2025, 1, 31),
             date(2025, 12, 31), 98)  # vanished from the December snapshot: not in S(M)
    con.execute("INSERT INTO mart.subscriber_month (month, subs_id, cons_fen, rent_fen, voice_fen, data_fen, "
                "sms_fen, roam_fen, vas_fen, discount_fen, adjust_fen, gift_fen, deposit_fen) "
                "VALUES (DATE '2025-06-01', 'TENURE6', 999999, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)")  # M-6: outside
    con.execute("INSERT INTO raw.susp VALUES ('SUSP_20241231.dat', 1, 'EOLD1', 'TWOSUSP', "
                "TIMESTAMP '2024-12-31 23:00:00', 'ARREARS_TWOWAY'), ('SUSP_20251205.dat', 1, 'EONE', 'TWOSUSP', "
                "TIMESTAMP '2025-12-05 09:00:00', 'ARREARS_ONEWAY')")
    con.execute("INSERT INTO staging.points_lot VALUES ('POINTSLOW', DATE '2025-01-01', 50000), "
                "('POINTSLOW', DATE '2023-12-01', 50000)")  # not the year before M's


def _overrides(con) -> None:
    for day, file_name in ((date(2025, 3, 1), "OVERRIDE_20250301.dat"), (date(2025, 9, 1), "OVERRIDE_20250901.dat"),
                           (date(2026, 1, 2), "OVERRIDE_20260102.dat")):
        con.execute("INSERT INTO ops.delivery (file_name, kind, period, day, path, loaded, quarantined, status) "
                    "VALUES (?, 'OVERRIDE', ?, ?, 'x', 1, 0, 'LOADED')", [file_name, f"{day:%Y%m%d}", day])
    rows = [("OVERRIDE_20250301.dat", "O1", "OVERRIDE", "STAR2", "2025-01-01", "2026-12-01"),
            ("OVERRIDE_20250901.dat", "O1", "OVERRIDE", "STAR5", "2025-01-01", "2026-12-01"),  # replaces O1
            ("OVERRIDE_20250301.dat", "O2", "REVOKED", "STAR6", "2025-01-01", "2026-12-01"),
            ("OVERRIDE_20250901.dat", "O2", "REVOKED", "NONE", "2025-01-01", "2026-12-01"),  # revokes O2
            ("OVERRIDE_20250301.dat", "O3", "OTHERMONTH", "STAR6", "2025-01-01", "2025-11-01"),  # not for M
            ("OVERRIDE_20260102.dat", "O4", "OTHERMONTH", "STAR6", "2025-12-01", "2025-12-01"),  # delivered after M
            ("OVERRIDE_20250301.dat", "O5", "OVERRIDEINELIGIBLE", "STAR6", "2025-01-01", "2026-12-01")]
    for line, (file_name, override_id, subs, tier, first, last) in enumerate(rows, 1):
        con.execute("INSERT INTO raw.override VALUES (?, ?, ?, ?, ?, ?, ?, 'r', 'a')",
                    [file_name, line, override_id, subs, tier, date.fromisoformat(first), date.fromisoformat(last)])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    warehouse, bill = _build_inputs(folder)
    expected = folder / "expected.parquet"
    con = duckdb.connect()
    con.execute("CREATE TABLE e (subs_id VARCHAR, tier VARCHAR)")
    con.executemany("INSERT INTO e VALUES (?, ?)", [[s, case[-1]] for s, case in CASES.items()])
    con.execute(f"COPY e TO '{expected}' (FORMAT parquet)")
    return folder, warehouse, bill, expected


@pytest.mark.parametrize("module", ["bench.floor", "bench.pandas_baseline", "bench.polars_baseline"])
def test_baseline_grades_every_six_star_rule(inputs, module):
    folder, warehouse, bill, expected = inputs
    out = folder / f"{module}.parquet"
    subprocess.run([sys.executable, "-m", module, "--bill", str(bill), "--warehouse", str(warehouse),
                    "--month", MONTH, "--out", str(out)], check=True)
    result = compare_tiers(expected, out)
    assert result["differences"] == 0, result["examples"]


def test_flatten_and_breakdown_read_any_timings_shape():
    runs = [{"flow": "ingest", "timings": {"seconds": 2.0}, "timing_keys": {"seconds": 2.0}, "input_files": []},
            {"flow": "monthly", "timings": {"steps": {"aggregate": 1.0, "grade": 3.0}},
             "timing_keys": ledger.flatten_numbers({"steps": {"aggregate": 1.0, "grade": 3.0}}), "input_files": []}]
    assert runs[1]["timing_keys"] == {"steps.aggregate": 1.0, "steps.grade": 3.0}
    assert ledger.flatten_numbers({"ok": True, "n": 1, "x": "y"}) == {"n": 1.0}
    got = ledger.breakdown(runs, wall_s=10.0)
    assert got["ingest.seconds"] == 2.0 and got["monthly.steps.grade"] == 3.0
    assert got["outside the ledger (wall - run rows)"] == pytest.approx(4.0)


def test_ratios_pair_runs_of_the_same_round():
    ms = [{"key": "a", "round": 1, "wall_s": 4.0}, {"key": "a", "round": 2, "wall_s": 9.0},
          {"key": "b", "round": 1, "wall_s": 2.0}, {"key": "b", "round": 2, "wall_s": 3.0},
          {"key": "b", "round": 0, "wall_s": 100.0}]
    assert report.per_round_ratios(ms, "a", "b", "wall_s") == [2.0, 3.0]
    assert report.spread([2.0, 3.0, 10.0], 1) == "3.0 (2.0..10.0)"


def test_benchmarks_md_section_is_replaced_not_duplicated(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro\n")
    report.replace_section(path, "1m", "first\n")
    report.replace_section(path, "1m", "second\n")
    text = path.read_text()
    assert "intro" in text and "second" in text and "first" not in text and text.count("bench:1m:begin") == 1


def test_saved_state_restores_and_detects_in_place_changes(tmp_path):
    home = tmp_path / "home"
    (home / "landing").mkdir(parents=True)
    (home / "outbox").mkdir()
    (home / "warehouse.duckdb").write_bytes(b"db")
    big = home / "outbox" / "big.dat"
    big.write_bytes(b"x" * (homes.LINK_MIN_BYTES + 1))
    homes.save_state(home, "s")
    (home / "warehouse.duckdb").write_bytes(b"changed")
    (home / "new").mkdir()
    homes.restore_state(home, "s")
    assert (home / "warehouse.duckdb").read_bytes() == b"db" and not (home / "new").exists()
    assert (home / "landing").is_dir() and big.stat().st_nlink == 2  # home and state: a link, not a copy
    big.write_bytes(b"y")  # a run rewriting a linked file in place
    with pytest.raises(homes.StateError, match="modified through a hard link"):
        homes.restore_state(home, "s")
