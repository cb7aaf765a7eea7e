"""The benchmark's report: medians over rounds (min..max), the ratios of performance.md measured side by side
(per round, then the median of those), where the time goes (ops.run_ledger), tier agreement; as Markdown
(bench/results/<size>-<date>.md and a section of BENCHMARKS.md) and the raw JSON next to it.
"""
from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from statistics import median

HARNESS_CHECK_BELOW = 1_000_000

RUNS = (  # key, what it is
    ("monthly_server", "monthly run of month 12, whole CLI, Prefect server running"),
    ("monthly_temporary_server", "the same with Prefect's temporary server (no PREFECT_API_URL)"),
    ("floor", "bare-DuckDB floor (bench/floor.py)"),
    ("pandas", "pandas baseline (bench/pandas_baseline.py)"),
    ("polars", "Polars baseline (bench/polars_baseline.py)"),
    ("nightly_no_delivery", "nightly of a day without delivery, state after month 12"),
    ("nightly_nothing_new", "nightly of the last delivery day again (nothing new), state after month 12"),
    ("nightly_month_end", "nightly of month 12's last day (ACCT + SUSP/REDEEM, no BILL), state after month 11"),
    ("noop_flow_server", "empty Prefect flow, server (Prefect's fixed cost)"),
    ("noop_flow_temporary_server", "empty Prefect flow, temporary server"),
    ("monthly_server_h36", "monthly run of month 36 (36 months stored), server"),
    ("monthly_dask", "monthly run of month 12 on Dask (--workers N, a LocalCluster), server"),
)
PIPELINE_RUNS = ("monthly_server", "monthly_temporary_server", "nightly_no_delivery", "nightly_nothing_new",
                 "nightly_month_end", "monthly_server_h36", "monthly_dask")


def _target_le(limit_1m: float, limit_10m: float | None = None):
    return lambda value, label: value <= (limit_10m if label == "10m" and limit_10m else limit_1m)


RATIOS = (  # label, numerator, denominator, target text, check(value, size label) or None
    ("monthly (server) ÷ floor", "monthly_server", "floor", "≤ 4 at 1M, ≤ 2 at 10M", _target_le(4, 2)),
    ("monthly (temporary server) ÷ floor", "monthly_temporary_server", "floor", "", None),
    ("pandas ÷ monthly (server)", "pandas", "monthly_server", "≥ 1.5", lambda v, _: v >= 1.5),
    ("Polars ÷ monthly (server)", "polars", "monthly_server", "", None),
    ("pandas ÷ floor", "pandas", "floor", "(~3 noted in the spec)", None),
    ("nightly, no delivery ÷ monthly (server)", "nightly_no_delivery", "monthly_server", "≤ 0.25", _target_le(0.25)),
    ("nightly, nothing new ÷ monthly (server)", "nightly_nothing_new", "monthly_server", "", None),
    ("nightly of month end, no BILL ÷ monthly (server)", "nightly_month_end", "monthly_server", "≤ 0.25",
     _target_le(0.25)),
    ("monthly on Dask ÷ local (server)", "monthly_dask", "monthly_server", "≤ 1.3", _target_le(1.3)),
    ("monthly, temporary server ÷ server", "monthly_temporary_server", "monthly_server", "", None),
    ("monthly with 36 months stored ÷ 12 months", "monthly_server_h36", "monthly_server", "≤ 1.10",
     _target_le(1.10)),
)

ABSOLUTE_TARGETS = (  # label, run key, field, limit, unit, size it applies to
    ("monthly run at 10M, wall", "monthly_server", "wall_s", 180, "s", "10m"),
    ("peak memory of the monthly run at 10M", "monthly_server", "maxrss_kib", 8 * 2**20, "KiB", "10m"),
    ("nightly with nothing new at 10M", "nightly_nothing_new", "wall_s", 5, "s", "10m"),
)


# --- numbers ---------------------------------------------------------------------------------------------------

def rounds_of(measurements: list[dict], key: str) -> list[dict]:
    return [m for m in measurements if m["key"] == key and m["round"] > 0]


def spread(values: list[float], digits: int = 1) -> str:
    """median (min..max) of the rounds; one value alone."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{median(values):.{digits}f} ({min(values):.{digits}f}..{max(values):.{digits}f})"


def per_round_ratios(measurements: list[dict], numerator: str, denominator: str, field: str) -> list[float]:
    """Ratios of the two runs of the same round: side by side, so that the machine's drift cancels."""
    below = {m["round"]: m[field] for m in rounds_of(measurements, denominator)}
    return [m[field] / below[m["round"]] for m in rounds_of(measurements, numerator)
            if below.get(m["round"])]


def verdict(check, value: float | None, label: str, harness_check: bool) -> str:
    if check is None or value is None:
        return ""
    if harness_check:
        return "n/a (harness check)"
    return "met" if check(value, label) else "**missed**"


# --- Markdown --------------------------------------------------------------------------------------------------

def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _mib(kib: float | None) -> float | None:
    return None if kib is None else kib / 1024


def runs_table(measurements: list[dict]) -> list[str]:
    rows = []
    for key, what in RUNS:
        ms = rounds_of(measurements, key)
        if ms:
            rows.append([f"`{key}`", what, len(ms), spread([m["wall_s"] for m in ms]),
                         spread([m["cpu_s"] for m in ms]), spread([_mib(m["maxrss_kib"]) for m in ms], 0),
                         spread([m["server_cpu_s"] for m in ms])])
    return _table(["run", "what", "rounds", "wall s", "CPU s (user+sys)", "peak RSS MiB", "server CPU s"], rows)


def ratios_table(measurements: list[dict], label: str, harness_check: bool) -> list[str]:
    rows = []
    for name, numerator, denominator, target, check in RATIOS:
        wall = per_round_ratios(measurements, numerator, denominator, "wall_s")
        if not wall:
            continue
        cpu = per_round_ratios(measurements, numerator, denominator, "cpu_s")
        rows.append([name, spread(wall, 2), spread(cpu, 2), target or "-",
                     verdict(check, median(wall), label, harness_check) or "-"])
    return _table(["ratio (per round, then median; min..max)", "wall", "CPU", "target", "verdict"], rows)


def absolute_table(measurements: list[dict], label: str, harness_check: bool) -> list[str]:
    rows = []
    for name, key, field, limit, unit, size in ABSOLUTE_TARGETS:
        values = [m[field] for m in rounds_of(measurements, key)]
        if not values:
            continue
        value = median(values)
        shown = f"{value / 2**20:.2f} GiB" if unit == "KiB" else f"{value:.1f} s"
        limit_shown = f"≤ {limit / 2**20:.0f} GiB" if unit == "KiB" else f"≤ {limit} s"
        applies = label == size and not harness_check
        rows.append([name, shown, limit_shown, ("met" if value <= limit else "**missed**") if applies
                     else f"n/a (this is {label})"])
    return _table(["absolute target", f"median here ({label})", "target", "verdict"], rows)


def ingest_table(measurements: list[dict]) -> list[str]:
    rows = []
    for key in ("monthly_server", "monthly_temporary_server", "monthly_server_h36", "nightly_month_end"):
        ms = [m for m in rounds_of(measurements, key) if m["extra"].get("ingest")]
        if not ms:
            continue
        ingest = [m["extra"]["ingest"] for m in ms]
        rows.append([f"`{key}`", f"{ingest[0]['bill_acct_lines']:,}", f"{ingest[0]['all_lines']:,}",
                     spread([i["ingest_s"] for i in ingest]), spread([i["rows_per_s"] for i in ingest], 0)])
    return _table(["run", "BILL + ACCT lines", "all lines loaded", "ingest s (ledger)", "BILL + ACCT rows/s"], rows)


def breakdown_table(measurements: list[dict]) -> list[str]:
    keys_present = [k for k in PIPELINE_RUNS if rounds_of(measurements, k)]
    timing_keys: list[str] = []
    for key in keys_present:
        for m in rounds_of(measurements, key):
            timing_keys += [t for t in m["extra"].get("breakdown", {}) if t not in timing_keys]
    rows = [["wall (time.monotonic around the CLI)"] + [spread([m["wall_s"] for m in rounds_of(measurements, k)])
                                                        for k in keys_present]]
    for timing in timing_keys:
        rows.append([f"`{timing}`"] + [spread([m["extra"]["breakdown"][timing] for m in rounds_of(measurements, k)
                                               if timing in m["extra"].get("breakdown", {})]) for k in keys_present])
    return _table(["seconds (median, min..max)"] + [f"`{k}`" for k in keys_present], rows)


def history_table(result: dict) -> list[str]:
    """Month 36 against month 12: the two provinces differ in size (joiners outnumber leavers), so the ratio
    is also shown per graded subscriber of S(M)."""
    label = result["settings"]["label"]
    long, short = result["provinces"].get(f"{label}-h36"), result["provinces"].get(label)
    if not long or not rounds_of(result["measurements"], "monthly_server_h36"):
        return []
    rows, per_subscriber = [], {}
    for name, info, key in (("12 months", short, "monthly_server"), ("36 months", long, "monthly_server_h36")):
        wall = median(m["wall_s"] for m in rounds_of(result["measurements"], key))
        graded = (info.get("sizes") or {}).get("subscribers_graded") or 0
        per_subscriber[name] = wall / graded if graded else None
        rows.append([name, info["month"], f"{graded:,}", f"{(info.get('sizes') or {}).get('bill_lines') or 0:,}",
                     f"{wall:.1f}", _num(per_subscriber[name] and per_subscriber[name] * 1e6, 1)])
    ratio = (per_subscriber["36 months"] / per_subscriber["12 months"]
             if per_subscriber["36 months"] and per_subscriber["12 months"] else None)
    return (["", "History stored: month 36 against month 12 (target: within 10%)", ""]
            + _table(["history", "month M", "graded in S(M)", "BILL_M lines", "monthly wall s (median)",
                      "µs per graded subscriber"], rows)
            + ["", f"Per graded subscriber, 36 months ÷ 12 months: {_num(ratio, 2)} "
                   "(ratio of medians; the per-round ratio of the wall times is in the table above)."])


def agreement_table(agreement: list[dict]) -> list[str]:
    grouped: dict[tuple, list[dict]] = {}
    for a in agreement:
        grouped.setdefault((a["province"], a["run"]), []).append(a)
    rows = [[province, f"`{run}`", len(items), f"{items[0]['reference_rows']:,}",
             ", ".join(f"{i['candidate_rows']:,}" for i in items[:1]), sum(i["differences"] for i in items)]
            for (province, run), items in grouped.items()]
    lines = _table(["province", "compared with the pipeline's mart.tier_assignment", "runs", "pipeline rows",
                    "its rows", "differences (sum)"], rows)
    for a in agreement:
        if a["differences"]:
            lines.append(f"\n**{a['run']} round {a['round']}: {a['differences']:,} differences**, e.g. "
                         f"(subs_id, pipeline, other): {a['examples']}")
    return lines


def preparation_lines(result: dict) -> list[str]:
    rows = []
    for label, info in result["provinces"].items():
        for step in ("generate", "backfill"):
            step_info = info.get(step, {})
            m = step_info.get("measurement") or {}
            reused = " (reused, measured " + str(step_info.get("measured_at")) + ")" if step_info.get("reused") else ""
            what = "tierflow generate" if step == "generate" else f"tierflow backfill months 1..{info['months'] - 1}"
            rows.append([label, what + reused, _num(m.get("wall_s")), _num(m.get("cpu_s")),
                         _num(_mib(m.get("maxrss_kib")), 0)])
    for m in result["measurements"]:
        if m["key"] == "backfill12":
            rows.append([result["settings"]["label"], "tierflow backfill months 1..12 on a fresh warehouse, once",
                         _num(m["wall_s"]), _num(m["cpu_s"]), _num(_mib(m["maxrss_kib"]), 0)])
    return _table(["province", "step", "wall s", "CPU s", "peak RSS MiB"], rows)


def _num(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def sizes_lines(result: dict) -> list[str]:
    rows = []
    for label, info in result["provinces"].items():
        sizes = info.get("sizes", {})
        rows.append([label, info["month"], f"{result['settings']['subscribers']:,}",
                     f"{sizes.get('subscribers_graded') or 0:,}", f"{sizes.get('bill_lines') or 0:,}",
                     f"{sizes.get('acct_lines') or 0:,}", f"{(sizes.get('warehouse_bytes') or 0) / 2**20:,.0f}",
                     f"{(info.get('landing_bytes') or 0) / 2**20:,.0f}", _counts(info.get("tier_counts", {}))])
    return _table(["province", "month M", "--subscribers", "graded in S(M)", "BILL_M lines", "ACCT lines",
                   "warehouse MiB after M", "landing MiB", "tiers of M"], rows)


def _counts(counts: dict) -> str:
    return ", ".join(f"{tier} {n:,}" for tier, n in sorted(counts.items()))


def machine_lines(result: dict) -> list[str]:
    machine, settings = result["machine"], result["settings"]
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    return [f"- machine: {machine['nproc']} cores usable ({machine['cpu_model']}), {machine['memory_gib']} GiB, "
            f"kernel {machine['kernel']}, Python {machine['python']}, niceness {machine['niceness']}",
            f"- load average (1, 5, 15 min): at start {_load(result['load_average']['start'])}, "
            f"at end {_load(result['load_average']['end'])}",
            f"- code: commit `{machine['git_commit']}` ({machine['git_branch']}"
            f"{', uncommitted changes' if machine['git_dirty'] else ''}), pipeline fingerprint "
            f"`{machine['pipeline_fingerprint']}`",
            f"- packages: {packages}",
            f"- every process: DuckDB threads {settings['threads']}, memory limit {settings['memory_limit']} "
            f"(TIERFLOW_THREADS, TIERFLOW_MEMORY_LIMIT), POLARS_MAX_THREADS {settings['threads']}",
            f"- Prefect server: healthy after {result['server']['startup_s']} s; {settings['rounds']} round(s), "
            f"runs interleaved in the order of the table below"]


def _load(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def commands_lines(result: dict, root: Path) -> list[str]:
    """The benchmark's command, then each command it ran (round 1), the province's preparation included even
    when it was reused from an earlier invocation."""
    lines = [f"    {result['settings']['command']}", ""]
    for label, info in result["provinces"].items():
        for step, argv in info.get("commands", {}).items():
            reused = " (reused this time)" if info.get(step, {}).get("reused") else ""
            server = "PREFECT_API_URL=http://127.0.0.1:<port>/api " if step == "backfill" else ""
            lines.append(f"    # {step} {label}{reused}\n    {server}" + " ".join(argv).replace(str(root) + "/", ""))
    seen = {f"{step}-{label}" for label in result["provinces"] for step in ("generate", "backfill")}
    for m in result["measurements"]:
        if m["key"] not in seen:
            seen.add(m["key"])
            prefect = {"server": "PREFECT_API_URL=http://127.0.0.1:<port>/api ",
                       "temporary server": "(no PREFECT_API_URL) "}.get(m["extra"].get("prefect"), "")
            lines.append(f"    # {m['key']}\n    {prefect}" + " ".join(m["argv"]).replace(str(root) + "/", ""))
    return lines


def markdown(result: dict, root: Path) -> str:
    s = result["settings"]
    harness_check = s["subscribers"] < HARNESS_CHECK_BELOW
    measurements = result["measurements"]
    title = f"## {s['label']}: {s['subscribers']:,} subscribers, {result['machine']['date'][:10]}"
    lines = [title, ""]
    if harness_check:
        lines += [f"> **Harness check, not a measurement**: {s['subscribers']:,} subscribers on a shared machine. "
                  "It shows the benchmark runs end to end and the tiers agree; the figures say nothing about "
                  "the targets, which are for 1M and 10M on a quiet machine.", ""]
    lines += machine_lines(result) + ["", "### Sizes", ""] + sizes_lines(result)
    lines += ["", "### Preparation", ""] + preparation_lines(result)
    lines += ["", "### Runs", ""] + runs_table(measurements)
    lines += ["", "Wall: time.monotonic around the child process. CPU and peak RSS: os.wait4 of the child (it "
              "and the processes it waited for, e.g. the temporary Prefect server; RSS is the largest single "
              "process). Server CPU: what the benchmark's Prefect server spent during the run (not in CPU).", ""]
    lines += ["### Ratios", ""] + ratios_table(measurements, s["label"], harness_check) + [""]
    lines += absolute_table(measurements, s["label"], harness_check) + history_table(result)
    lines += ["", "### Ingest (from ops.run_ledger of the run)", ""] + ingest_table(measurements)
    lines += ["", "### Where the time goes (ops.run_ledger timings of the run's rows)", ""]
    lines += breakdown_table(measurements)
    lines += ["", "### Tier agreement", ""] + agreement_table(result["agreement"])
    lines += ["", "### Commands", ""] + commands_lines(result, root)
    return "\n".join(lines) + "\n"


# --- files -----------------------------------------------------------------------------------------------------

def _free_stem(results_dir: Path, label: str) -> str:
    stem, n = f"{label}-{date.today():%Y-%m-%d}", 1
    while (results_dir / f"{stem}.md").exists() or (results_dir / f"{stem}.json").exists():
        n += 1
        stem = f"{label}-{date.today():%Y-%m-%d}-{n}"
    return stem


def write_results(result: dict, results_dir: Path, benchmarks_md: Path, update_benchmarks_md: bool):
    root = benchmarks_md.parent
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = _free_stem(results_dir, result["settings"]["label"])
    text = markdown(result, root)
    markdown_path, json_path = results_dir / f"{stem}.md", results_dir / f"{stem}.json"
    markdown_path.write_text(text)
    json_path.write_text(json.dumps(result, indent=1, default=str))
    if update_benchmarks_md:
        shown = json_path.relative_to(root) if json_path.is_relative_to(root) else json_path
        replace_section(benchmarks_md, result["settings"]["label"], text + f"\nRaw figures: `{shown}`.\n")
        growth = growth_markdown(results_dir)
        if growth:
            replace_section(benchmarks_md, "growth", growth)
    return markdown_path, json_path


def _latest_result(results_dir: Path, label: str) -> dict | None:
    found = sorted(results_dir.glob(f"{label}-*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text()) if found else None


def growth_markdown(results_dir: Path, small_label: str = "1m", large_label: str = "10m") -> str | None:
    """How the runs grow from 1M to 10M (performance.md: linear in subscribers), from the latest result of
    each size; they come from two invocations, so these are absolute times, not side-by-side ratios."""
    small, large = _latest_result(results_dir, small_label), _latest_result(results_dir, large_label)
    if not small or not large:
        return None
    factor = large["settings"]["subscribers"] / small["settings"]["subscribers"]
    rows = []
    for key, _ in RUNS:
        a, b = rounds_of(small["measurements"], key), rounds_of(large["measurements"], key)
        if a and b:
            wall_a, wall_b = median(m["wall_s"] for m in a), median(m["wall_s"] for m in b)
            cpu_a, cpu_b = median(m["cpu_s"] for m in a), median(m["cpu_s"] for m in b)
            rows.append([f"`{key}`", f"{wall_a:.1f}", f"{wall_b:.1f}", f"{wall_b / wall_a:.2f}",
                         f"{cpu_b / cpu_a:.2f}"])
    header = [f"## Growth from {small_label} ({small['machine']['date'][:10]}) to {large_label} "
              f"({large['machine']['date'][:10]})", "",
              f"Subscribers ×{factor:.0f}: linear growth would be ×{factor:.0f}. Medians of each result; two "
              "invocations, so compare with the load averages of both sections.", ""]
    table = _table(["run", f"wall s {small_label}", f"wall s {large_label}", "wall ×", "CPU ×"], rows)
    return "\n".join(header + table) + "\n"


def replace_section(path: Path, label: str, text: str) -> None:
    """BENCHMARKS.md keeps one section per size between markers; a new result of that size replaces it."""
    begin, end = f"<!-- bench:{label}:begin -->", f"<!-- bench:{label}:end -->"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text}{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    updated = pattern.sub(lambda _: block, current) if pattern.search(current) else current.rstrip() + f"\n\n{block}\n"
    path.write_text(updated)
