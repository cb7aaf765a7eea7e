from datetime import date

import pytest

from transforms.core.calendar import Month, month_range, parse_day


def test_month_arithmetic_crosses_years():
    m = Month.parse("2026-01")
    assert m - 5 == Month(2025, 8)
    assert m + 36 == Month(2029, 1)
    assert Month(2026, 6) - Month(2026, 1) == 5
    assert (m.first_day, m.last_day) == (date(2026, 1, 1), date(2026, 1, 31))
    assert Month(2024, 2).last_day == date(2024, 2, 29)
    assert Month.parse("202605").compact == "202605" and str(Month.parse("202605")) == "2026-05"


@pytest.mark.parametrize("text", ["2026-13", "2026-00", "26-01", "2026/01", "2026-1", "abc", ""])
def test_bad_months_are_refused(text):
    with pytest.raises(ValueError):
        Month.parse(text)


@pytest.mark.parametrize("text", ["2026-02-30", "20261301", "2026-2-1", "../../etc"])
def test_bad_days_are_refused(text):
    with pytest.raises(ValueError):
        parse_day(text)


def test_month_range():
    assert [str(m) for m in month_range(Month(2025, 11), Month(2026, 2))] == ["2025-11", "2025-12", "2026-01",
                                                                              "2026-02"]
    with pytest.raises(ValueError):
        month_range(Month(2026, 2), Month(2026, 1))
