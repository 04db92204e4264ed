"""The report and the time budget of `vq3d bench gpu`: what survives a job's time limit.

`Report` holds the JSON object and rewrites its file atomically (`vq3d.utils.io`) when a check
starts and when it ends, so a process killed at any moment (SIGKILL included) leaves a valid
file with every finished check; each check also prints one short line to stderr as it ends, and
a failing check's traceback goes to the report (its last 15 lines), not to the screen.

`Budget` makes the budget hard: checks ask it before each of their parts (`check`, and
`require` before a part that cannot stop midway, such as a compilation), which stops them
`margin_s` before the deadline; a watchdog thread writes the report and ends the process at the
deadline itself if a part has not returned. Checks stopped either way are reported as skipped,
with "budget" in the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from vq3d.utils.io import atomic_write_text

TRACEBACK_LINES = 15


class Skip(Exception):
    """A check that cannot run here; the message says why."""


class OverBudget(Skip):
    """The time budget ran out (the reason starts with "budget")."""


class Budget:
    """A deadline `seconds` after `start` (time.monotonic()); checks stop starting parts
    `margin_s` before it, the watchdog ends the process at it."""

    def __init__(self, seconds: float, start: float | None = None, margin_s: float = 10.0) -> None:
        self.seconds = seconds
        self.start = time.monotonic() if start is None else start
        self.margin_s = min(margin_s, 0.1 * seconds)
        self._children: list[subprocess.Popen] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        """Seconds left for checks (the margin excluded)."""
        return self.seconds - self.margin_s - self.elapsed()

    def check(self, what: str) -> None:
        """Raise `OverBudget` if no time is left to start `what`."""
        if self.left() <= 0:
            raise OverBudget(f"budget: {what} not started, {self.elapsed():.0f} s of {self.seconds:.0f} s used")

    def require(self, seconds: float, what: str) -> None:
        """Raise `OverBudget` unless `seconds` are left for `what` (a part that cannot stop midway)."""
        if self.left() < seconds:
            raise OverBudget(f"budget: {what} needs about {seconds:.0f} s, {max(0.0, self.left()):.0f} s left")

    def arm(self, on_deadline: Callable[[], int]) -> None:
        """Start the watchdog: at the deadline it kills the adopted children, calls `on_deadline`
        (which writes the report and returns the exit code) and ends the process. (Not a SIGALRM: an exception raised
        inside PyTorch's C++ callbacks, the autograd engine's, aborts the process.)"""
        watchdog = threading.Timer(max(0.01, self.seconds - self.elapsed()), self._hard_stop, (on_deadline,))
        watchdog.daemon = True
        watchdog.start()
        self._watchdog = watchdog

    def disarm(self) -> None:
        if getattr(self, "_watchdog", None) is not None:
            self._watchdog.cancel()

    def adopt(self, child: subprocess.Popen) -> None:
        """A child process (group) to kill if the watchdog ends the run."""
        self._children.append(child)

    def _hard_stop(self, on_deadline: Callable[[], int]) -> None:
        for child in self._children:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except OSError:
                pass
        code = 1
        try:
            code = on_deadline()
        finally:
            sys.stderr.flush()
            os._exit(code)


class Report:
    """The report's JSON object and its file (`path`, or None to keep it in memory)."""

    def __init__(self, path: str | Path | None, header: dict[str, Any], order: list[str],
                 clock: Callable[[], float]) -> None:
        self.path, self.clock = (Path(path) if path else None), clock
        self.data: dict[str, Any] = {"benchmark": "gpu", **header, "status": "running", "running": None,
                                     "order": order, "checks": {}, "skipped": {}, "errors": {}, "seconds": {}}
        self._lock = threading.RLock()  # the watchdog thread writes too
        self.write()

    def write(self) -> None:
        if self.path is None:
            return
        with self._lock:
            atomic_write_text(self.path, json.dumps(self.data, indent=1, default=str) + "\n")

    def start(self, name: str) -> None:
        with self._lock:
            self.data["running"] = name
            self.write()

    def finish(self, name: str, seconds: float, *, result: dict | None = None, skipped: str | None = None,
               error: BaseException | None = None, summary: str = "") -> None:
        """Record one check's end (a result, a skip reason or an error), rewrite the file, print
        one line."""
        with self._lock:
            line = self._record(name, seconds, result, skipped, error, summary)
        print(f"bench gpu [{self.data['elapsed_s']:6.1f} s] {name}: {line}", file=sys.stderr, flush=True)

    def _record(self, name: str, seconds: float, result: dict | None, skipped: str | None,
                error: BaseException | None, summary: str) -> str:
        d = self.data
        d["seconds"][name] = round(seconds, 1)
        if result is not None:
            d["checks"][name] = result
            line = f"ok{': ' + summary if summary else ''}"
        elif skipped is not None:
            d["skipped"][name] = skipped
            line = f"skipped: {skipped}"
        else:
            assert error is not None
            lines = traceback.format_exception(type(error), error, error.__traceback__)
            tail = "".join(lines).rstrip("\n").splitlines()[-TRACEBACK_LINES:]
            d["errors"][name] = {"error": f"{type(error).__name__}: {error}"[:500], "traceback": tail}
            where = f" (traceback in {self.path})" if self.path else ""
            line = f"error: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}{where}"
        d["running"] = None
        d["elapsed_s"] = round(self.clock(), 1)
        self.write()
        return line

    def close(self, status: str, total_s: float) -> None:
        with self._lock:
            self.data.update(status=status, total_s=round(total_s, 1))
            self.write()

    def stop_at_deadline(self, budget_s: float, total_s: float) -> int:
        """The watchdog's last write: the running check and those not started are skipped for the
        budget; prints the report; returns the exit code (1 if a check failed)."""
        with self._lock:
            d = self.data
            if d["running"]:
                d["skipped"][d["running"]] = f"budget: killed at the deadline ({budget_s:.0f} s)"
            for name in d["order"]:
                if name not in d["checks"] and name not in d["skipped"] and name not in d["errors"]:
                    d["skipped"][name] = f"budget: not started by the deadline ({budget_s:.0f} s)"
            self.close("stopped at the budget", total_s)
            print(json.dumps(d, default=str), flush=True)
            return 1 if d["errors"] else 0
