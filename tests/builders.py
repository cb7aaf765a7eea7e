"""Hand-made deliveries for tests: small, readable scenarios written into a landing area."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from transforms.core.calendar import Month
from transforms.ingest.control import encode_records, write_delivery
from transforms.warehouse.db import connect


def deliver(home: Path, day: str, file_name: str, lines: list[str], encoding: str = "GBK") -> Path:
    """Writes landing/<day>/<file_name> and its control file (written last, as the sender does)."""
    return write_delivery(Path(home) / "landing" / day, file_name, encode_records(lines, encoding),
                          len(lines), encoding)


@dataclass(frozen=True)
class Sub:
    subs_id: str
    brand: str = "MZONE"
    subs_type: str = "PERSONAL"
    status: str = "NORMAL"
    open_date: str = "20200115"
    cancel_date: str = ""
    realname: str = "Y"
    group_key: str = "N"
    vip: str = "N"
    region: str = "4110"
    manager: str = ""

    def line(self) -> str:
        digits = "".join(ch for ch in self.subs_id if ch.isdigit()).rjust(8, "0")[-8:]
        return "|".join([self.subs_id, "138" + digits, "C" + digits, "王伟", "41010219800101" + digits[-4:],
                         self.brand, self.subs_type, self.status, self.open_date, self.cancel_date,
                         self.realname, self.group_key, self.vip, self.region, self.manager])


@dataclass
class Province:
    """Month by month: who is in the snapshot and what they spent (fen, by item)."""
    subscribers: dict[str, Sub] = field(default_factory=dict)
    bills: dict[Month, list[tuple[str, str, int]]] = field(default_factory=dict)
    snapshots: dict[Month, list[Sub]] = field(default_factory=dict)

    def join(self, *subs: Sub) -> None:
        for sub in subs:
            self.subscribers[sub.subs_id] = sub

    def change(self, subs_id: str, **attrs) -> None:
        self.subscribers[subs_id] = replace(self.subscribers[subs_id], **attrs)

    def leave(self, subs_id: str) -> None:
        del self.subscribers[subs_id]

    def spend(self, month: Month, subs_id: str, amount_fen: int, item: str = "RENT") -> None:
        self.bills.setdefault(month, []).append((subs_id, item, amount_fen))

    def close_month(self, month: Month) -> None:
        """Freezes the month-end snapshot of M (call after the month's joins, changes and leaves)."""
        self.snapshots[month] = list(self.subscribers.values())

    def write(self, home: Path) -> None:
        for month, subs in self.snapshots.items():
            deliver(home, month.last_day.strftime("%Y%m%d"), f"ACCT_{month.last_day:%Y%m%d}.dat",
                    [s.line() for s in subs])
        for month in self.snapshots:
            rows = self.bills.get(month, [])
            deliver(home, (month + 1).first_day.replace(day=3).strftime("%Y%m%d"), f"BILL_{month.compact}.dat",
                    [f"{s}|{month.compact}|{item}|{amount}" for s, item, amount in rows])


def lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """A written file's lines (an outbox file, say), decoded."""
    return path.read_bytes().decode(encoding).splitlines()


def query(home: Path, sql: str, params=None) -> list[tuple]:
    """Rows of a query on the home's warehouse, opened read-only and closed again."""
    con = connect(home, read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()
