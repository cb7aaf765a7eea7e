"""`tierflow rules check FILE` and `tierflow simulate --month M --rules FILE`: neither runs a flow (both only
read), so neither needs Prefect. Heavy imports stay inside the functions to keep `tierflow --help` quick.
"""
from __future__ import annotations

import sys
from pathlib import Path


def cmd_rules(args, home: Path) -> int:
    from transforms.grade.packs import pack_path
    from transforms.grade.rulepack import PackError, load_pack
    try:
        pack = load_pack(pack_path(args.file))
    except PackError as exc:  # already "<file>:<line>: <message>", the form editors jump to
        print(exc, file=sys.stderr)
        return 1
    print("\n".join(describe_pack(pack)))
    return 0


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def describe_pack(pack) -> list[str]:
    """Everything `rules check` shows: tiers, eligibility, rules, caps, protection, points, tags, entitlements,
    the catalogue metrics the pack reads and its grading window."""
    lines = [f"pack {pack.name}, version {pack.version} ({pack.source}): valid"]
    if pack.description:
        lines.append(f"description: {pack.description}")
    if pack.effective_from:
        lines.append(f"in force from grading month {pack.effective_from}")
    lines.append("tiers, lowest first: " + ", ".join(
        t if pack.tier_labels[t] == t else f"{t} ({pack.tier_labels[t]})" for t in pack.tiers))
    lines += ["derived metrics:"] * bool(pack.derived)
    lines += [f"  {d.name} = {_one_line(d.text)}" for d in pack.derived.values()]
    lines.append("eligibility, the first check that holds makes the subscriber ineligible:")
    lines += [f"  {_one_line(e.condition.text)}  ->  {pack.unrated}, {e.reason}" for e in pack.eligibility]
    lines += ["ranks, among eligible subscribers, ties by subs_id:"] * bool(pack.ranks)
    lines += [f"  {r.name} by {_one_line(r.text)}, {'descending' if r.descending else 'ascending'}"
              for r in pack.ranks]
    lines.append("rules, first match wins (overrides come before them):")
    lines += [f"  {i}. {'otherwise' if r.condition is None else _one_line(r.condition.text)}  ->  "
              f"{r.tier}, {r.reason}" for i, r in enumerate(pack.rules, 1)]
    lines.append("caps:" if pack.caps else "caps: none")
    lines += [f"  {_one_line(c.condition.text)}  ->  at most {c.max_tier}, {c.reason}" for c in pack.caps]
    lines.append(f"downgrade protection: {pack.protection_months} months" if pack.protection_months
                 else "downgrade protection: none")
    lines.append(f"points: expire after {pack.points.expiry_months} months; multipliers "
                 + ", ".join(f"{t} {_decimal(k)}" for t, k in pack.points.multipliers.items()))
    lines.append("tags:" if pack.tags else "tags: none")
    lines += [f"  {name}: {_tag_text(tag)}" for name, tag in pack.tags.items()]
    lines.append("entitlements:" if pack.entitlements else "entitlements: none")
    lines += [f"  {name}: {_one_line(c.text)}" for name, c in pack.entitlements.items()]
    lines.append("metrics used: " + ", ".join(sorted(pack.metrics_used())))
    window = pack.grading_window  # BILL months grading month M reads
    lines.append(f"grading window: {window} months of BILL (M-{window - 1}..M)" if window > 1
                 else "grading window: 1 month of BILL (M)")
    return lines


def _tag_text(tag) -> str:
    text = _one_line(tag.condition.text)
    if tag.substitutes:
        what_if = ", ".join(f"{m} = {_one_line(e)}" for m, e in tag.substitutes.items())
        text += f", and the rule that assigned the tier would fail with {what_if}"
    return text


def _decimal(k) -> str:
    """A multiplier (Fraction of a decimal literal) as the decimal the pack wrote."""
    if k.denominator == 1:
        return str(k.numerator)
    digits = 0
    while (k * 10 ** digits).denominator != 1:
        digits += 1
    return f"{float(k):.{digits}f}"


def cmd_simulate(args, home: Path) -> int:
    from transforms.core.calendar import Month
    from transforms.core.resources import rules_dir
    from transforms.grade.packs import find_pack_by_version, pack_for_month
    from transforms.report.simulation import default_directory, text_report, write_simulation
    from transforms.runs.simulate import SimulationError, official_pack_version, simulate
    from transforms.warehouse.db import connect, warehouse_path

    month = Month.parse(args.month)
    candidate = pack_for_month(args.rules, month)
    if not warehouse_path(home).exists():
        raise SimulationError(f"no warehouse in {home}: grade {month} first")
    con = connect(home, read_only=True)
    try:
        name, version = official_pack_version(con, month)
        official = (pack_for_month(args.official, month) if args.official
                    else find_pack_by_version(version, [rules_dir(), Path(candidate.source).parent]))
        if official is None:
            raise SimulationError(f"{month} was graded with pack {name} version {version}, which is not in "
                                  f"{rules_dir()}: pass that pack file with --official")
        sim = simulate(con, month, candidate, official)
    finally:
        con.close()
    directory = Path(args.out) if args.out else default_directory(home, month, candidate)
    written = write_simulation(sim, directory)
    print(text_report(sim))
    print(f"\nwrote {directory}/ ({', '.join(p.name for p in written)})")
    return 0
