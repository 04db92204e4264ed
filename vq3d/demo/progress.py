"""The demo's phase display: one stderr line per phase and tick, with its elapsed time and ETAs.

    display = PhaseDisplay([("synth", "synthetic data"), ("stage1", "train stage 1"), ...])
    display.set_estimate("stage1", 360.0)
    with display.phase("stage1"):
        ...   # every `tick_seconds`: "[2/8] train stage 1  02:10 / ~06:00, ETA total 09:30 (elapsed 02:40)"

"ETA total" is the time left until the whole demo is done: what is left of the running phase's
estimate plus the estimates of the phases still to come. Lines go through `tqdm.write`, so they
land above the training loops' own progress bars instead of through them.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm


def clock(seconds: float) -> str:
    """mm:ss, or h:mm:ss from an hour on."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class PhaseDisplay:
    """Phases in order, each with an estimate (seconds) that may be revised until it starts."""

    def __init__(self, phases: list[tuple[str, str]], stream: TextIO | None = None,
                 tick_seconds: float = 30.0, enabled: bool = True) -> None:
        self.names = [name for name, _ in phases]
        self.titles = dict(phases)
        self.estimates = dict.fromkeys(self.names, 0.0)
        self.finished: set[str] = set()
        self.stream = stream
        self.tick_seconds = tick_seconds
        self.enabled = enabled
        self.started = time.monotonic()
        self.lines: list[str] = []  # everything printed, for tests and the page

    def set_estimate(self, name: str, seconds: float) -> None:
        self.estimates[name] = max(0.0, float(seconds))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def eta_total(self, name: str | None = None, phase_elapsed: float = 0.0) -> float:
        """Seconds left: the rest of phase `name`'s estimate plus every later unfinished phase."""
        later = self.names[self.names.index(name) + 1:] if name else self.names
        rest = max(0.0, self.estimates[name] - phase_elapsed) if name else 0.0
        return rest + sum(self.estimates[n] for n in later if n not in self.finished)

    def _prefix(self, name: str) -> str:
        width = max(len(t) for t in self.titles.values())
        return f"[{self.names.index(name) + 1}/{len(self.names)}] {self.titles[name]:<{width}}"

    def status_line(self, name: str, phase_elapsed: float) -> str:
        return (f"{self._prefix(name)}  {clock(phase_elapsed)} / ~{clock(self.estimates[name])}, "
                f"ETA total {clock(self.eta_total(name, phase_elapsed))} (elapsed {clock(self.elapsed())})")

    def write(self, line: str) -> None:
        self.lines.append(line)
        if self.enabled:
            tqdm.write(line, file=self.stream or sys.stderr)

    def skip(self, name: str, why: str = "done earlier, skipped") -> None:
        self.finished.add(name)
        self.write(f"{self._prefix(name)}  {why}")

    @contextmanager
    def phase(self, name: str, on_tick: Callable[[float], None] | None = None) -> Iterator[None]:
        """Print the phase's line now, every `tick_seconds` while it runs, and when it ends.

        `on_tick(phase_elapsed)` runs on every tick (the demo records training time with it)."""
        start = time.monotonic()
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(self.tick_seconds):
                phase_elapsed = time.monotonic() - start
                self.write(self.status_line(name, phase_elapsed))
                if on_tick is not None:
                    on_tick(phase_elapsed)

        self.write(self.status_line(name, 0.0))
        ticker = threading.Thread(target=tick, name=f"vq3d-demo-{name}", daemon=True)
        ticker.start()
        try:
            yield
        except BaseException:
            stop.set()
            ticker.join()
            self.write(f"{self._prefix(name)}  stopped after {clock(time.monotonic() - start)}")
            raise
        stop.set()
        ticker.join()
        self.finished.add(name)
        self.write(f"{self._prefix(name)}  done in {clock(time.monotonic() - start)}, "
                   f"ETA total {clock(self.eta_total(name, float('inf')))} (elapsed {clock(self.elapsed())})")
