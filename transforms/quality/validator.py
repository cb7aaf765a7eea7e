"""Great Expectations in a process of its own: the gates' suites validated beside the run, not inside it.

GE's import is ~4.5 s of Python. Imported on a thread of the run's process, it shares the GIL with everything the
run does meanwhile (Prefect's start, parsing); imported in a child process it runs on the other core, and is
ready when the first gate asks. The CLI starts the child when a run will validate (suites.start_validator); the
child imports GE at once, then validates what it is sent, one suite and one (small, aggregated) frame at a time,
until its parent closes the pipe or dies (its end of the pipe closes with it). Only the validation runs there:
the results file, its fault points and everything else stay in the run's process.

Protocol: pickled (suite_name, frame, params, variant) in, pickled ("ok", suites.Validated) or ("error",
exception) out, over two pipes given as file descriptors (whatever GE prints on stdout cannot break them).
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path


class ValidatorGone(Exception):
    """The validation process ended (killed, out of memory): the caller validates in its own process."""


class Validator:
    """The run's end of a validation process."""

    def __init__(self):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Run from the folder holding this very package, so that the child imports the parent's code. Its stderr
        # only with TIERFLOW_DEBUG: a run killed while GE is still being imported there would otherwise leave
        # its stderr open to whoever reads it for the seconds the import lasts (its errors come back by the pipe).
        self.process = subprocess.Popen([sys.executable, "-m", "transforms.quality.validator", str(to_child_r),
                                         str(from_child_w)], pass_fds=(to_child_r, from_child_w),
                                        cwd=Path(__file__).resolve().parents[2], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL,
                                        stderr=None if os.environ.get("TIERFLOW_DEBUG") else subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._out = os.fdopen(self._to_child, "wb")
        self._in = os.fdopen(self._from_child, "rb")
        self._lock = threading.Lock()

    def validate(self, suite_name: str, frame, params: dict, variant: str | None):
        """suites.validate in the child; its exception raised here; ValidatorGone when the child is gone."""
        with self._lock:
            try:
                pickle.dump((suite_name, frame, params, variant), self._out, protocol=pickle.HIGHEST_PROTOCOL)
                self._out.flush()
                status, value = pickle.load(self._in)
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                raise ValidatorGone(f"the validation process (pid {self.process.pid}) ended: "
                                    f"{type(exc).__name__}") from None
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        """Ends the child at the run's exit: it holds nothing to keep, and may still be importing GE (a run that
        failed early does not wait for that)."""
        for stream in (self._out, self._in):
            try:
                stream.close()
            except OSError:
                pass
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _portable(exc: Exception) -> Exception:
    """The exception itself when it survives pickling, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any exception that cannot be sent back
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def serve(read_fd: int, write_fd: int) -> None:
    """The child: GE imported, then one validation per request until the parent's end closes."""
    from transforms.quality import suites

    suites.import_ge()
    with os.fdopen(read_fd, "rb") as requests, os.fdopen(write_fd, "wb") as replies:
        while True:
            try:
                suite_name, frame, params, variant = pickle.load(requests)
            except EOFError:
                return
            try:
                reply = ("ok", suites.validate(suite_name, frame, params, variant))
            except Exception as exc:  # noqa: BLE001 - sent back to be raised in the run
                reply = ("error", _portable(exc))
            pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
            replies.flush()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
