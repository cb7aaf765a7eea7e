"""Points timeline of one month (rules.md, "Points"): golden values worked out by hand from the spec."""
from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime

import polars as pl
import pytest

from transforms.core.calendar import Month
from transforms.grade import points
from transforms.grade.points import prior_year_points
from transforms.warehouse.db import connect
from transforms.warehouse.inputs import grading_metrics, lot_totals, lot_totals_from_lots, open_lots
from transforms.warehouse.marts import write_points

MAY = Month.parse("2026-05")  # M-36 = 2023-05, M-35 = 2023-06
EXPIRY = 36  # six-star's points.expiry_months: points of M expire at the end of M+36


def apply_points_month(month, open_lots, redemptions, accrual_base, expiry_months=EXPIRY):
    return points.apply_points_month(month, open_lots, redemptions, accrual_base, expiry_months)


def roll_open_lots(month, open_lots, result):
    return points.roll_open_lots(month, open_lots, result, EXPIRY)


def expiring_next_month(month, open_lots_after_m):
    return points.expiring_next_month(month, open_lots_after_m, EXPIRY)


def lots(*rows):
    """(subs_id, 'YYYY-MM', remaining)"""
    return pl.DataFrame(
        [(s, Month.parse(m).first_day, r) for s, m, r in rows],
        schema={"subs_id": pl.String, "earn_month": pl.Date, "remaining": pl.Int64}, orient="row")


def redemptions(*rows):
    """(txn_id, subs_id, datetime, points)"""
    return pl.DataFrame(list(rows), orient="row",
                        schema={"txn_id": pl.String, "subs_id": pl.String,
                                "txn_time": pl.Datetime("us"), "points": pl.Int64})


def base(*rows):
    """(subs_id, cons_fen, mult_num, mult_den)"""
    return pl.DataFrame(list(rows), orient="row",
                        schema={"subs_id": pl.String, "cons_fen": pl.Int64,
                                "mult_num": pl.Int64, "mult_den": pl.Int64})


def may(day, hour=12, minute=0):
    return datetime(2026, 5, day, hour, minute)


def as_dicts(df, *cols):
    return {row[0]: row[1:] for row in df.select(cols).iter_rows()}


# --- accrual (step 3) ---

def test_accrual_rounds_up_exactly_with_the_one_and_a_half_multiplier():
    result = apply_points_month(MAY, lots(), redemptions(), base(
        ("A", 12345, 3, 2),   # 12345 * 1.5 / 100 = 185.175 -> 186
        ("B", 100, 3, 2),     # 100 * 1.5 / 100 = 1.5 -> 2
        ("C", 200, 3, 2),     # 200 * 1.5 / 100 = 3 exactly -> 3
        ("D", 1, 5, 1),       # 1 * 5 / 100 = 0.05 -> 1
    ))
    assert as_dicts(result.new_lots, "subs_id", "earned") == {"A": (186,), "B": (2,), "C": (3,), "D": (1,)}
    assert set(result.new_lots["earn_month"]) == {date(2026, 5, 1)}
    assert result.new_lots.schema["earned"] == pl.Int64


def test_negative_consumption_and_zero_multiplier_earn_nothing():
    result = apply_points_month(MAY, lots(), redemptions(), base(
        ("NEG", -5000, 2, 1),    # max(-5000, 0) = 0 -> 0
        ("UNR", 99999, 0, 1),    # k = 0 (UNRATED) -> 0
        ("ONE", 250, 1, 1),      # 250 * 1 / 100 = 2.5 -> 3
    ))
    assert result.new_lots["subs_id"].to_list() == ["ONE"]  # only earned > 0 rows
    # yet everyone in the accrual base has a balance row
    assert as_dicts(result.balances, "subs_id", "earned", "balance") == {
        "NEG": (0, 0), "ONE": (3, 3), "UNR": (0, 0)}


# --- redemptions (step 1) ---

def test_redemption_consumes_oldest_lots_first_across_three_lots():
    open_lots = lots(("A", "2024-01", 100), ("A", "2024-02", 50), ("A", "2024-03", 70))  # balance 220
    result = apply_points_month(MAY, open_lots, redemptions(("R1", "A", may(3), 130)), base())
    # 130 = all 100 of 2024-01 + 30 of 2024-02; 2024-03 untouched
    assert result.lot_changes.select("earn_month", "redeemed", "expired").rows() == [
        (date(2024, 1, 1), 100, 0), (date(2024, 2, 1), 30, 0)]
    assert as_dicts(result.balances, "subs_id", "redeemed", "balance") == {"A": (130, 90)}  # 220 - 130
    rolled = roll_open_lots(MAY, open_lots, result)
    assert rolled.select("earn_month", "remaining").rows() == [
        (date(2024, 2, 1), 20), (date(2024, 3, 1), 70)]  # 50 - 30; the emptied lot is gone


def test_a_rejected_redemption_does_not_block_a_later_smaller_one():
    open_lots = lots(("A", "2025-01", 100))
    result = apply_points_month(MAY, open_lots, redemptions(
        ("R3", "A", may(20), 40),   # third: 40 <= 40 left -> accepted, leaves 0
        ("R1", "A", may(2), 60),    # first: 60 <= 100 -> accepted, leaves 40
        ("R2", "A", may(10), 50),   # second: 50 > 40 -> rejected whole
    ), base())
    assert result.accepted["txn_id"].to_list() == ["R1", "R3"]
    assert result.rejected.select("txn_id", "points", "balance_at_time").rows() == [("R2", 50, 40)]
    assert as_dicts(result.balances, "subs_id", "redeemed", "balance") == {"A": (100, 0)}  # 60 + 40; 100 - 100


def test_ties_at_equal_time_are_decided_by_txn_id():
    open_lots = lots(("A", "2025-01", 100))
    result = apply_points_month(MAY, open_lots, redemptions(
        ("T2", "A", may(5), 80),    # listed first, but T1 < T2 goes first
        ("T1", "A", may(5), 80),    # 80 <= 100 -> accepted, leaves 20
    ), base())
    assert result.accepted["txn_id"].to_list() == ["T1"]
    assert result.rejected.select("txn_id", "balance_at_time").rows() == [("T2", 20)]  # 80 > 20


def test_redemption_equal_to_the_balance_is_accepted():
    open_lots = lots(("A", "2024-06", 90), ("A", "2025-06", 60))  # 90 + 60 = 150
    result = apply_points_month(MAY, open_lots, redemptions(("R1", "A", may(31, 23, 59), 150)), base())
    assert result.rejected.height == 0
    assert result.lot_changes.select("earn_month", "redeemed").rows() == [
        (date(2024, 6, 1), 90), (date(2025, 6, 1), 60)]
    assert as_dicts(result.balances, "subs_id", "balance") == {"A": (0,)}
    assert roll_open_lots(MAY, open_lots, result).height == 0


def test_redemption_without_any_points_is_rejected_against_zero():
    result = apply_points_month(MAY, lots(("A", "2025-01", 5)), redemptions(("R1", "NOPTS", may(1), 1)), base())
    assert result.rejected.select("txn_id", "subs_id", "balance_at_time").rows() == [("R1", "NOPTS", 0)]
    # every subs_id of any input has a balance row, sorted by subs_id
    assert result.balances.select("subs_id", "balance").rows() == [("A", 5), ("NOPTS", 0)]


def test_subscribers_are_settled_independently_in_one_pass():
    open_lots = lots(("A", "2025-01", 100), ("B", "2025-02", 50))
    result = apply_points_month(MAY, open_lots, redemptions(
        ("A1", "A", may(1), 70),    # A: 70 <= 100, leaves 30
        ("B1", "B", may(2), 60),    # B: 60 > 50 -> rejected at 50
        ("A2", "A", may(3), 20),    # A: 20 <= 30, leaves 10
        ("B2", "B", may(4), 50),    # B: 50 <= 50, leaves 0
        ("A3", "A", may(5), 20),    # A: 20 > 10 -> rejected at 10
        ("C1", "C", may(6), 5),     # C has no points: rejected at 0
    ), base())
    assert result.accepted["txn_id"].to_list() == ["A1", "A2", "B2"]
    assert result.rejected.select("txn_id", "balance_at_time").rows() == [("A3", 10), ("B1", 50), ("C1", 0)]
    assert result.balances.select("subs_id", "redeemed", "balance").rows() == [
        ("A", 90, 10), ("B", 50, 0), ("C", 0, 0)]   # A 100 - 70 - 20; B 50 - 50


# --- expiry (step 2) ---

def test_only_what_redemptions_left_of_the_m_minus_36_lot_expires():
    open_lots = lots(("A", "2023-05", 100), ("A", "2023-06", 40),   # M-36 and M-35
                     ("B", "2023-06", 25))                           # M-35 only
    result = apply_points_month(MAY, open_lots, redemptions(("R1", "A", may(9), 30)), base())
    # A: 30 taken from 2023-05 (oldest), its other 70 expire; 2023-05 lot M-35 and B's lot stay
    assert result.lot_changes.rows() == [("A", date(2023, 5, 1), 30, 70)]
    assert as_dicts(result.balances, "subs_id", "redeemed", "expired", "balance") == {
        "A": (30, 70, 40),   # 140 - 30 - 70
        "B": (0, 0, 25)}


def test_expiry_comes_after_redemptions_and_before_accrual():
    open_lots = lots(("A", "2023-05", 50))   # the M-36 lot is still spendable during M
    result = apply_points_month(MAY, open_lots, redemptions(("R1", "A", may(31), 20)),
                                base(("A", 1000, 1, 1)))   # 1000 * 1 / 100 = 10
    assert result.accepted["txn_id"].to_list() == ["R1"]
    assert result.lot_changes.rows() == [("A", date(2023, 5, 1), 20, 30)]   # 50 - 20 expire
    assert as_dicts(result.balances, "subs_id", "earned", "redeemed", "expired", "balance") == {
        "A": (10, 20, 30, 10)}   # 50 - 20 - 30 + 10; the new points do not expire


def test_expiry_months_is_a_parameter():
    open_lots = lots(("A", "2025-05", 7), ("A", "2025-06", 8))
    result = apply_points_month(MAY, open_lots, redemptions(), base(), expiry_months=12)  # M-12 = 2025-05
    assert result.lot_changes.rows() == [("A", date(2025, 5, 1), 0, 7)]


# --- two months in a row ---

def test_balance_identity_over_two_months():
    april = Month.parse("2026-04")  # M-36 = 2023-04
    open_march = lots(("A", "2023-04", 50), ("A", "2023-05", 40), ("A", "2025-01", 200))  # balance(Mar) = 290
    apr = apply_points_month(april, open_march, redemptions(("RA", "A", datetime(2026, 4, 15), 80)),
                             base(("A", 10000, 2, 1)))   # 10000 * 2 / 100 = 200
    # 80 = 50 of 2023-04 + 30 of 2023-05: nothing left of 2023-04 to expire
    assert apr.lot_changes.rows() == [("A", date(2023, 4, 1), 50, 0), ("A", date(2023, 5, 1), 30, 0)]
    assert as_dicts(apr.balances, "subs_id", "earned", "redeemed", "expired", "balance") == {
        "A": (200, 80, 0, 410)}   # 290 - 80 - 0 + 200
    open_april = roll_open_lots(april, open_march, apr)
    assert open_april.select("earn_month", "remaining").rows() == [
        (date(2023, 5, 1), 10), (date(2025, 1, 1), 200), (date(2026, 4, 1), 200)]   # sums to 410
    # notice: what expires at the end of May is what is left of 2023-05 (May - 36)
    assert expiring_next_month(april, open_april).rows() == [("A", 10)]

    may_run = apply_points_month(MAY, open_april, redemptions(
        ("RB", "A", may(1), 500),   # 500 > 410 -> rejected
        ("RC", "A", may(2), 5),     # 5 <= 410 -> accepted, from 2023-05 (10 -> 5)
    ), base(("A", -300, 2, 1)))     # negative -> 0
    assert may_run.rejected.select("txn_id", "balance_at_time").rows() == [("RB", 410)]
    assert may_run.lot_changes.rows() == [("A", date(2023, 5, 1), 5, 5)]   # the 5 left expire
    assert as_dicts(may_run.balances, "subs_id", "earned", "redeemed", "expired", "balance") == {
        "A": (0, 5, 5, 400)}   # balance(Apr) 410 - 5 - 5 + 0
    assert roll_open_lots(MAY, open_april, may_run)["remaining"].sum() == 400


def test_roll_open_lots_keeps_untouched_lots_and_adds_new_ones():
    open_lots = lots(("A", "2023-05", 9),                          # M-36: expires whole (9)
                     ("A", "2024-01", 10), ("B", "2024-01", 20), ("B", "2024-02", 30), ("C", "2025-01", 40))
    result = apply_points_month(MAY, open_lots, redemptions(("R1", "B", may(7), 25)),   # 20 of 2024-01, 5 of 2024-02
                                base(("A", 100, 1, 1), ("D", 300, 1, 1)))               # A earns 1, D earns 3
    assert result.lot_changes.rows() == [
        ("A", date(2023, 5, 1), 0, 9), ("B", date(2024, 1, 1), 20, 0), ("B", date(2024, 2, 1), 5, 0)]
    rolled = roll_open_lots(MAY, open_lots, result)
    # untouched lots in input order, then the redeemers' lots, then May's new lots
    assert rolled.rows() == [
        ("A", date(2024, 1, 1), 10), ("C", date(2025, 1, 1), 40),
        ("B", date(2024, 2, 1), 25),                                # 30 - 5
        ("A", date(2026, 5, 1), 1), ("D", date(2026, 5, 1), 3)]
    assert result.balances.select("subs_id", "balance").rows() == [
        ("A", 11), ("B", 25), ("C", 40), ("D", 3)]                 # A 19 - 9 + 1; B 50 - 25


# --- prior_year_points ---

def test_prior_year_points_counts_earned_of_last_year_only():
    history = pl.DataFrame(
        [("A", date(2024, 12, 1), 900),    # two years before 2026: ignored
         ("A", date(2025, 3, 1), 1000),    # fully redeemed since: still counts (earned, not remaining)
         ("A", date(2025, 12, 1), 500),
         ("A", date(2026, 1, 1), 700),     # current year: ignored
         ("B", date(2026, 2, 1), 300)],    # nothing in 2025
        schema={"subs_id": pl.String, "earn_month": pl.Date, "earned": pl.Int64}, orient="row")
    assert prior_year_points(MAY, history).rows() == [("A", 1500), ("B", 0)]   # 1000 + 500
    assert prior_year_points(Month.parse("2026-01"), history).rows() == [("A", 1500), ("B", 0)]


# --- contract ---

def test_inputs_outside_the_contract_are_refused():
    with pytest.raises(ValueError, match="not dated in 2026-05"):
        apply_points_month(MAY, lots(), redemptions(("R1", "A", datetime(2026, 6, 1), 5)), base())
    with pytest.raises(ValueError, match="open lots"):
        apply_points_month(MAY, lots(("A", "2023-04", 5)), redemptions(), base())   # expired at end of April
    with pytest.raises(ValueError, match="open lots"):
        apply_points_month(MAY, lots(("A", "2026-05", 5)), redemptions(), base())   # May is not yet earned
    with pytest.raises(ValueError, match="duplicate subs_id in accrual_base"):
        apply_points_month(MAY, lots(), redemptions(), base(("A", 100, 1, 1), ("A", 200, 1, 1)))


def test_output_schemas_when_nothing_happens():
    result = apply_points_month(MAY, lots(), redemptions(), base())
    assert result.lot_changes.schema == pl.Schema(
        {"subs_id": pl.String, "earn_month": pl.Date, "redeemed": pl.Int64, "expired": pl.Int64})
    assert result.rejected.columns == ["txn_id", "subs_id", "txn_time", "points", "balance_at_time"]
    assert result.balances.columns == ["subs_id", "earned", "redeemed", "expired", "balance"]
    assert result.accepted.height == result.new_lots.height == result.balances.height == 0


def test_lot_totals_and_the_redeemers_lots_read_from_the_warehouse_by_hand(tmp_path):
    """inputs.lot_totals / open_lots over staging.points_lot and points_move, month M = 2026-05 (lots of
    2023-05..2026-04 are open during M; moves count when made before M):
    A: 2023-04 (500, older than M-36: gone), 2023-05 (100, 40 redeemed in 2024-02: 60 left, expires at the end
       of M), 2024-01 (50, 10 redeemed in 2024-03: 40 left; 5 more in M itself, a rerun of M: not counted),
       2026-05 (999, earned in M: not open during M) -> opening 100, expiring 60;
    B: 2025-01 (30) -> opening 30, expiring 0; C: 2025-02 (20, all redeemed in 2025-06) -> no open lot.
    Redemptions dated in M: B's only (A's is dated 2026-06-01)."""
    con = connect(tmp_path)
    con.execute("INSERT INTO staging.points_lot VALUES ('A', '2023-04-01', 500), ('A', '2023-05-01', 100), "
                "('A', '2024-01-01', 50), ('A', '2026-05-01', 999), ('B', '2025-01-01', 30), ('C', '2025-02-01', 20)")
    con.execute("INSERT INTO staging.points_move VALUES ('2023-06-01', 'A', '2023-04-01', 0, 500), "
                "('2024-02-01', 'A', '2023-05-01', 40, 0), ('2024-03-01', 'A', '2024-01-01', 10, 0), "
                "('2026-05-01', 'A', '2024-01-01', 5, 0), ('2025-06-01', 'C', '2025-02-01', 20, 0)")
    con.execute("INSERT INTO raw.redeem VALUES ('REDEEM_20260509.dat', 1, 'R1', 'B', '2026-05-09 10:00:00', 5, "
                "'APP'), ('REDEEM_20260601.dat', 1, 'R2', 'A', '2026-06-01 00:00:00', 5, 'APP')")
    totals = lot_totals(con, MAY, EXPIRY).sort("subs_id")  # April has no balances: summed over the lots
    assert as_dicts(totals, "subs_id", "opening", "expiring") == {"A": (100, 60), "B": (30, 0)}
    every_lot = open_lots(con, MAY, EXPIRY).sort("subs_id", "earn_month")
    assert every_lot.rows() == [("A", date(2023, 5, 1), 60), ("A", date(2024, 1, 1), 40), ("B", date(2025, 1, 1), 30)]
    assert open_lots(con, MAY, EXPIRY, redeemers_only=True).rows() == [("B", date(2025, 1, 1), 30)]
    # the same totals as summing the lots in Polars (points._lot_totals, which apply_points_month uses)
    assert points._lot_totals(every_lot, (MAY - EXPIRY).first_day).sort("subs_id").equals(totals)
    con.close()


def test_lot_totals_open_on_the_balances_of_the_month_before(tmp_path):
    """With April's balances in mart.points_balance, May opens on them (A 100, B 30; C's 0 is no open lot) and
    only the expiring lot is read: A's 2023-05 lot, 100 earned, 40 redeemed in 2024-02 and 15 more in May itself
    (a rerun of May: not counted) -> 60. The lots summed give the same."""
    con = connect(tmp_path)
    con.execute("INSERT INTO staging.points_lot VALUES ('A', '2023-04-01', 500), ('A', '2023-05-01', 100), "
                "('A', '2024-01-01', 40), ('B', '2025-01-01', 30), ('C', '2025-02-01', 20)")
    con.execute("INSERT INTO staging.points_move VALUES ('2023-06-01', 'A', '2023-04-01', 0, 500), "
                "('2024-02-01', 'A', '2023-05-01', 40, 0), ('2026-05-01', 'A', '2023-05-01', 15, 0), "
                "('2025-06-01', 'C', '2025-02-01', 20, 0)")
    con.execute("INSERT INTO mart.points_balance (month, subs_id, earned, redeemed, expired, balance, "
                "prior_year_points, expiring_next_month) VALUES ('2026-04-01', 'A', 0, 0, 0, 100, 0, 60), "
                "('2026-04-01', 'B', 0, 0, 0, 30, 0, 0), ('2026-04-01', 'C', 0, 0, 0, 0, 0, 0)")
    totals = lot_totals(con, MAY, EXPIRY).sort("subs_id")
    assert as_dicts(totals, "subs_id", "opening", "expiring") == {"A": (100, 60), "B": (30, 0)}
    assert lot_totals_from_lots(con, MAY, EXPIRY).sort("subs_id").equals(totals)
    # the balance is what May opens on: a balance that disagrees with the lots shows through
    con.execute("UPDATE mart.points_balance SET balance = 99 WHERE subs_id = 'B'")
    assert as_dicts(lot_totals(con, MAY, EXPIRY), "subs_id", "opening", "expiring")["B"] == (99, 0)
    con.close()


def points_month(month, new_lots=(), balances=()):
    """A PointsMonth of `month` with only these new lots (subs_id, earned) and balances (subs_id, balance)."""
    empty = apply_points_month(month, lots(), redemptions(), base())
    return replace(empty, new_lots=pl.DataFrame([(s, month.first_day, e) for s, e in new_lots],
                                                schema=empty.new_lots.schema, orient="row"),
                   balances=pl.DataFrame([(s, 0, 0, 0, b) for s, b in balances],
                                         schema=empty.balances.schema, orient="row"))


def test_prior_year_points_are_summed_in_january_and_carried_through_the_year(tmp_path):
    """mart.points_balance.prior_year_points (the lots earned in the calendar year before M's), by hand. Lots of
    2025: A 2025-03 100 + 2025-11 50 = 150, B 2025-06 20; A's 2024-12 999 is two years back.
    2026-01: summed over 2025's lots -> A 150, B 20 (B without a balance still gets its row).
    2026-02: carried from January (B's lot changed since shows only where the lots are summed again) -> A 150,
    B 20, C 0 (C's lot is of 2026). 2026-12 without November's balances: summed -> A 150, B 1000.
    2027-01, although December has balances: summed over 2026's lots (A's January 7, C's February 5) -> A 7,
    C 5; B has none.
    The grading metrics of February take it from February's balances (B 20), points_earned_12m from the lots
    of 2025-03..2026-02 (B 1000)."""
    con = connect(tmp_path)
    con.execute("INSERT INTO staging.points_lot VALUES ('A', '2024-12-01', 999), ('A', '2025-03-01', 100), "
                "('A', '2025-11-01', 50), ('B', '2025-06-01', 20)")

    def prior_year(month):
        return dict(con.execute("SELECT subs_id, prior_year_points FROM mart.points_balance WHERE month = ? "
                                "AND prior_year_points > 0 ORDER BY subs_id", [month.first_day]).fetchall())

    jan, feb = Month(2026, 1), Month(2026, 2)
    write_points(con, jan, points_month(jan, new_lots=[("A", 7)], balances=[("A", 157)]))
    assert prior_year(jan) == {"A": 150, "B": 20}
    con.execute("UPDATE staging.points_lot SET earned = 1000 WHERE subs_id = 'B'")
    write_points(con, feb, points_month(feb, new_lots=[("C", 5)], balances=[("A", 157), ("C", 5)]))
    assert prior_year(feb) == {"A": 150, "B": 20}
    assert con.execute("SELECT count(*) FROM mart.points_balance WHERE month = '2026-02-01'").fetchone()[0] == 3
    write_points(con, Month(2026, 12), points_month(Month(2026, 12)))
    assert prior_year(Month(2026, 12)) == {"A": 150, "B": 1000}
    write_points(con, Month(2027, 1), points_month(Month(2027, 1)))
    assert prior_year(Month(2027, 1)) == {"A": 7, "C": 5}

    con.execute("""INSERT INTO raw.subscriber_history (subs_id, brand, subs_type, status, open_date,
                       realname_flag, group_key_flag, vip_flag, valid_from, valid_to, file_name, line_no)
                   SELECT s, 'GOTONE', 'PERSONAL', 'ACTIVE', DATE '2020-01-01', true, false, false,
                          DATE '2026-02-28', NULL, 'ACCT_20260228.dat', 1 FROM unnest(['A', 'B', 'C']) t(s)""")
    metrics = grading_metrics(con, feb, date(2026, 2, 28))
    assert as_dicts(metrics, "subs_id", "prior_year_points", "points_earned_12m", "points_balance") == {
        "A": (150, 157, 157), "B": (20, 1000, 0), "C": (0, 5, 5)}
    con.close()
