"""Running one quality gate's Great Expectations suite (expectations/<suite>.json) on a small pandas frame.

Suites are data: each `expectations/<suite>.json` holds GE expectation configurations (type + kwargs) and the
tunable bounds in their kwargs; operators change thresholds there. A value only known at run time is a GE suite
parameter, `{"$PARAMETER": "<name>"}` as the whole value of a kwarg (GE substitutes top-level kwarg values only),
given in the `params` of `run_suite` (a missing parameter is an error, never a silent default). Suite `meta` names
the parameters under `params` and may name:
  - `row_weight`: a column saying how many records a frame row stands for (counts in messages are weighted);
  - `row_label`: a column whose value is put in front of an example (which month, which channel, ...).

GE forgives what a gate must not, so a suite is refused when GE cannot build one of its expectations (its
ExpectationSuite would drop it with a log line) or when a kwarg holds any other dict (GE would compare values
with the dict itself: the check fails without an error).

One ephemeral GE context serves the process: its pandas data source, one asset per suite and the suites, rebuilt
when their JSON changes; a validation keeps nothing in it. Great Expectations is imported on first use only (its
import costs seconds), or on a thread by `warm_up_in_background` while the caller reads a file; or, for a run of
the CLI, in a validation process of its own (start_validator, transforms.quality.validator), which then
validates every suite while the results stay here.

Usage: `run_suite(...)` returns a GateResult; `result.raise_if_failed()` raises GateFailed carrying it.
"""
from __future__ import annotations

import atexit
import functools
import json
import math
import os
import re
import sys
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transforms.core.files import write_atomic
from transforms.core.resources import expectations_dir

if TYPE_CHECKING:  # imported where a value is read: the CLI starts the validation process before pandas' import
    import pandas as pd

_SUITE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_RESULT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_PARAMETER = "$PARAMETER"
_MAX_EXAMPLES = 5


# --- results ---------------------------------------------------------------------------------------------------

@dataclass
class GateFailure:
    expectation: str            # GE expectation type, e.g. expect_column_values_to_be_in_set
    column: str | None          # the column checked ("A, B" for a column pair)
    counts: dict                # element_count, unexpected_count, missing_count; records/unexpected_records if weighted
    examples: list              # offending values (with the row label in front when the suite names one)

    def line(self) -> str:
        target = f"{self.expectation}({self.column})" if self.column else self.expectation
        c = self.counts
        if "error" in c:
            return f"{target}: error {c['error']}"
        if "unexpected_records" in c:
            how_many = f"{c['unexpected_records']:,} of {c['records']:,} unexpected"
        elif "unexpected_count" in c:
            checked = c.get("element_count", 0) - c.get("missing_count", 0)
            how_many = f"{c['unexpected_count']:,} of {checked:,} unexpected"
        else:
            how_many = f"observed {c.get('observed_value')!r}"
        return f"{target}: {how_many}" + (f", e.g. {self.examples!r}" if self.examples else "")


@dataclass
class GateResult:
    gate: str                   # the suite name
    success: bool
    failures: list[GateFailure]
    statistics: dict            # GE's statistics (evaluated / successful / unsuccessful expectations), gate extras
    accepted: bool = False      # circuit breaker only: it tripped and the operator accepted it
    results_path: Path | None = None

    def message(self) -> str:
        """One line for the operator."""
        detail = "; ".join(f.line() for f in self.failures)
        if self.accepted:
            return f"gate {self.gate} accepted by the operator despite: {detail}"
        if self.success:
            return f"gate {self.gate} passed ({self.statistics.get('evaluated_expectations', 0)} expectations)"
        return f"gate {self.gate} failed: {detail}"

    def raise_if_failed(self) -> "GateResult":
        if not self.success:
            raise GateFailed(self)
        return self

    def as_dict(self) -> dict:
        """JSON-ready, for the run ledger's checks."""
        return {"gate": self.gate, "success": self.success, "accepted": self.accepted,
                "message": self.message(), "failures": [asdict(f) for f in self.failures],
                "statistics": self.statistics,
                "results_path": str(self.results_path) if self.results_path else None}


class GateFailed(Exception):
    """A quality gate failed; `.result` is its GateResult and the message is the operator's line."""

    def __init__(self, result: GateResult):
        super().__init__(result.message())
        self.result = result


# --- suites ----------------------------------------------------------------------------------------------------

def suite_path(suite_name: str) -> Path:
    """expectations/<suite_name>.json (name checked: no path out of the folder)."""
    if not _SUITE_NAME.match(suite_name):
        raise ValueError(f"invalid suite name {suite_name!r}")
    path = expectations_dir() / f"{suite_name}.json"
    if not path.is_file():
        raise ValueError(f"no expectation suite {suite_name!r} in {expectations_dir()}")
    return path


def load_suite(suite_name: str) -> dict:
    """The suite JSON of expectations/<suite_name>.json, its kwargs checked."""
    return _parse_suite(suite_name, suite_path(suite_name).read_text(encoding="utf-8"))


def _parse_suite(suite_name: str, text: str) -> dict:
    spec = json.loads(text)
    for number, expectation in enumerate(spec["expectations"], 1):
        for key, value in expectation["kwargs"].items():
            _check_kwarg(f"suite {suite_name}, expectation {number} ({expectation['type']}), {key}", value, True)
    return spec


def _check_kwarg(where: str, value, whole_value: bool) -> None:
    """Refuses any dict in kwargs but a whole value {"$PARAMETER": name}: GE substitutes nothing else."""
    if isinstance(value, dict):
        if not (whole_value and set(value) == {_PARAMETER} and isinstance(value[_PARAMETER], str)):
            raise ValueError(f"{where}: {value!r} is not a value; a run-time value is written "
                             f'{{"{_PARAMETER}": "<name>"}} as the whole kwarg value')
    elif isinstance(value, list):
        for item in value:
            _check_kwarg(where, item, False)


@dataclass(frozen=True)
class _Prepared:
    text: str                   # the suite JSON it was built from
    meta: dict
    batch_definition: object    # GE batch definition of the suite's dataframe asset
    suite: object               # GE ExpectationSuite, in the context
    columns: tuple[str, ...]    # the frame columns it reads (the others are left out: GE copies whole frames)


_prepared_suites: dict[str, _Prepared] = {}
_ge_lock = threading.Lock()     # one GE context per process, not made for concurrent use
_warm_up_started = threading.Event()


def warm_up_in_background() -> None:
    """Starts importing Great Expectations on a thread (once per process; after validate_in_a_process, in the
    validation process instead; nothing when that process runs already). Its import is seconds of Python;
    a caller about to read a file (MD5, Polars, DuckDB: native code without the GIL) calls this first, and
    the gate that follows finds GE ready instead of importing it then. Not a daemon: a process that ends
    before any gate waits for the import rather than exiting in the middle of it. A failed import is
    raised again by the gate's own call."""
    if _validator is not None or _warm_up_started.is_set() or _ge.cache_info().currsize:
        return
    if _validator_on_warm_up:
        start_validator()
        return
    _warm_up_started.set()
    threading.Thread(target=_ge_under_lock, name="great-expectations-import").start()


def _ge_under_lock() -> None:
    try:
        with _ge_lock:
            _ge()
    except Exception:  # noqa: BLE001 - not cached: the gate's own _ge() raises it where it is handled
        pass


@functools.cache
def _ge():
    """Great Expectations, the process's ephemeral context and its pandas data source."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network
    import great_expectations as gx  # slow import: only when a gate runs
    from great_expectations.data_context.types.base import (DataContextConfig, InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                               analytics_enabled=False, progress_bars=ProgressBarsConfig(globally=False))
    context = gx.get_context(mode="ephemeral", project_config=config)
    return gx, context, context.data_sources.add_pandas("tierflow")


def _prepared(suite_name: str, variant: str | None = None) -> _Prepared:
    """The suite (or its variant) in the context, built on first use and again whenever its JSON changed."""
    text = suite_path(suite_name).read_text(encoding="utf-8")
    key = suite_name if variant is None else f"{suite_name}__{variant}"
    cached = _prepared_suites.get(key)
    if cached and cached.text == text:
        return cached
    spec = _variant(_parse_suite(suite_name, text), variant)
    gx, context, source = _ge()
    expectations = _expectations(suite_name, spec)
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=key, expectations=expectations,
                                                             meta=spec.get("meta", {})))
    # The context rebuilds the suite from its store, and GE's ExpectationSuite drops what it cannot build.
    if len(suite.expectations) != len(spec["expectations"]):
        raise ValueError(f"suite {suite_name}: GE kept {len(suite.expectations)} of its "
                         f"{len(spec['expectations'])} expectations")
    batch_definition = (cached.batch_definition if cached else
                        source.add_dataframe_asset(key).add_batch_definition_whole_dataframe("whole"))
    _prepared_suites[key] = _Prepared(text, spec.get("meta", {}), batch_definition, suite,
                                      _columns(spec))
    return _prepared_suites[key]


def _variant(spec: dict, variant: str | None) -> dict:
    """The expectations that apply to a variant: those whose meta.applies_to lists it, and those without one."""
    if variant is None:
        return spec
    kept = [e for e in spec["expectations"] if variant in e.get("meta", {}).get("applies_to", [variant])]
    return {**spec, "expectations": kept}


def _columns(spec: dict) -> tuple[str, ...]:
    """The frame columns a suite reads: its expectations' columns and the meta's row label and weight."""
    names = [e["kwargs"][k] for e in spec["expectations"] for k in ("column", "column_A", "column_B")
             if k in e["kwargs"]]
    names += [spec.get("meta", {}).get(k) for k in ("row_label", "row_weight")]
    return tuple(dict.fromkeys(n for n in names if n))


def _expectations(suite_name: str, spec: dict) -> list:
    """GE expectation objects of a suite; one GE cannot build is an error naming it and GE's reason."""
    from great_expectations.exceptions import GreatExpectationsError
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    built = []
    for number, e in enumerate(spec["expectations"], 1):
        try:
            built.append(ExpectationConfiguration(type=e["type"], kwargs=e["kwargs"],
                                                  meta=e.get("meta", {})).to_domain_obj())
        except (GreatExpectationsError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise ValueError(f"suite {suite_name}, expectation {number} ({e['type']}) is invalid: {exc}") from None
    return built


def _require_params(suite_name: str, suite, params: Mapping) -> None:
    """GE would raise SuiteParameterError naming neither the suite nor what it was given."""
    missing = sorted(set(suite.suite_parameter_options) - params.keys())
    if missing:
        raise ValueError(f"suite {suite_name} needs parameter {', '.join(map(repr, missing))} "
                         f"(given: {sorted(params)})")


# --- running a suite -------------------------------------------------------------------------------------------

def run_suite(suite_name: str, frame: pd.DataFrame, params: Mapping, results_dir: Path | None = None,
              result_name: str | None = None, variant: str | None = None) -> GateResult:
    """Validates one frame with one suite, its $PARAMETERs taken from `params` (in the validation process when
    one was started: start_validator); writes GE's validation result to results_dir/<result_name or
    suite_name>.json when results_dir is given (volatile fields removed: same inputs, same file)."""
    if result_name is not None and not _RESULT_NAME.match(result_name):
        raise ValueError(f"invalid result name {result_name!r}")
    validated = _validated(suite_name, frame, dict(params), variant)
    path = None
    if results_dir is not None:
        path = _write_results(validated.doc, validated.ordered_ids, Path(results_dir), result_name or suite_name,
                              params, validated.frame)
    return GateResult(suite_name, not validated.failures, validated.failures, validated.statistics,
                      results_path=path)


@dataclass
class Validated:
    """What a validation found: the failures in suite order, GE's statistics and result document, the ids of
    the suite's expectations in order, and the frame as validated (the suite's columns)."""
    failures: list[GateFailure]
    statistics: dict
    doc: dict
    ordered_ids: list[str]
    frame: pd.DataFrame


def validate(suite_name: str, frame: pd.DataFrame, params: dict, variant: str | None = None) -> Validated:
    """One frame validated with one suite by this process's GE context."""
    with _ge_lock:
        prepared = _prepared(suite_name, variant)
        _require_params(suite_name, prepared.suite, params)
        frame = frame[[c for c in prepared.columns if c in frame.columns]].reset_index(drop=True)  # positions
        batch = prepared.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        # A gate nearly always passes: BOOLEAN_ONLY answers that in a third of the time. Only a failure is
        # validated again with COMPLETE: all unexpected row indexes, to weight counts (frames are aggregated).
        validation = batch.validate(prepared.suite, result_format="BOOLEAN_ONLY", expectation_parameters=params)
        if not validation.success:
            validation = batch.validate(prepared.suite, result_format="COMPLETE", expectation_parameters=params)
        ordered_ids = [e.id for e in prepared.suite.expectations]
    # GE groups results by column: back to suite order by expectation id.
    by_id = {r.expectation_config.id: r for r in validation.results}
    failures = [_failure(by_id[i], frame, prepared.meta) for i in ordered_ids if not by_id[i].success]
    return Validated(failures, dict(validation.statistics), validation.to_json_dict(), ordered_ids, frame)


# --- the validation process (transforms.quality.validator) ------------------------------------------------------

_validator = None               # the process's Validator once started
_validator_on_warm_up = False   # warm_up_in_background starts the validation process instead of a thread


def start_validator() -> None:
    """Starts the validation process (once per process, unless GE is here already): GE is imported there while
    this process goes on, on the other core. For a run that will validate, started as early as possible."""
    global _validator
    if _validator is not None or _ge.cache_info().currsize:
        return
    from transforms.quality.validator import Validator

    _validator = Validator()
    atexit.register(_validator.close)


def validate_in_a_process() -> None:
    """warm_up_in_background, when it is first called, starts the validation process instead of a thread (a run
    that may find nothing to validate, such as a nightly, starts none)."""
    global _validator_on_warm_up
    _validator_on_warm_up = True


def _validated(suite_name: str, frame: pd.DataFrame, params: dict, variant: str | None) -> Validated:
    """validate() in the validation process when there is one, else here; a process that ended (killed, out of
    memory) is said once on stderr and the run validates here from then on."""
    global _validator
    if _validator is not None:
        from transforms.quality.validator import ValidatorGone

        try:
            return _validator.validate(suite_name, frame, params, variant)
        except ValidatorGone as gone:
            print(f"tierflow: {gone}; validating in this process", file=sys.stderr, flush=True)
            _validator = None
    return validate(suite_name, frame, params, variant)


def import_ge() -> None:
    """Great Expectations imported and its context made, now (the validation process does it first)."""
    _ge()


def _failure(result, frame: pd.DataFrame, meta: dict) -> GateFailure:
    config = result.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column") or (f"{kwargs['column_A']}, {kwargs['column_B']}" if "column_A" in kwargs
                                      else None)
    error = _exception_message(result.exception_info)
    if error:
        return GateFailure(config.type, column, {"error": error}, [])
    res = result.result or {}
    counts = {k: plain(res[k]) for k in ("element_count", "unexpected_count", "missing_count", "observed_value")
              if k in res}
    indexes = list(res.get("unexpected_index_list") or [])
    weight = meta.get("row_weight")
    if weight and kwargs.get("column") and weight in frame and indexes:
        checked = frame[kwargs["column"]].notna()
        weights = frame[weight]
        if weights[checked].notna().all():
            counts["records"] = int(weights[checked].sum())
            counts["unexpected_records"] = int(weights.iloc[indexes].sum())
    values = res.get("unexpected_list") or res.get("partial_unexpected_list") or []
    if not values and "observed_value" in res and "unexpected_count" not in res:
        values = [res["observed_value"]]
    label = meta.get("row_label")
    examples = []
    for position, value in enumerate(values[:_MAX_EXAMPLES]):
        value = plain(value)
        row_label = None
        if label and label in frame and position < len(indexes):
            row_label = plain(frame[label].iloc[indexes[position]])
        examples.append(f"{row_label}: {value}" if row_label is not None else value)
    return GateFailure(config.type, column, counts, examples)


def _exception_message(info) -> str | None:
    """GE reports an exception either flat or keyed by metric; the first message found."""
    if not info:
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def plain(value):
    """JSON-ready Python value (numpy / Arrow scalars unwrapped, floats rounded for reading)."""
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    import pandas as pd

    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if value is pd.NA:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def _write_results(doc: dict, ordered_ids: list[str], results_dir: Path, name: str, params: Mapping,
                   frame: pd.DataFrame) -> Path:
    """GE's full validation result, results in suite order, without run-specific ids and load times; with the
    parameters and the (aggregated, small) frame validated, for the record."""
    import pandas as pd

    rank = {i: n for n, i in enumerate(ordered_ids)}
    doc["results"] = sorted(doc.get("results", []), key=lambda r: rank.get(r["expectation_config"].get("id"), 0))
    for r in doc["results"]:
        r["expectation_config"].pop("id", None)
    doc.pop("id", None)
    doc.get("meta", {}).get("batch_markers", {}).pop("ge_load_time", None)
    doc["tierflow_params"] = dict(params)
    doc["tierflow_frame"] = [{k: plain(v) for k, v in row.items() if not pd.isna(v)}
                             for row in frame.to_dict("records")]
    text = json.dumps(doc, indent=1, sort_keys=True, default=str, ensure_ascii=False)
    return write_atomic(results_dir / f"{name}.json", text.encode("utf-8"), "results")
