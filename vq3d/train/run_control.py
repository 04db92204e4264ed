"""When to stop, how far along we are, and what to do about non-finite losses.

    with RunControl(cfg.steps, cfg.max_minutes, start_step, cfg.max_bad_steps,
                    show_progress=info.is_main) as rc:
        step = start_step
        while not rc.should_stop(step):
            loss = ...
            if rc.record_loss(loss, step):   # False: non-finite, skip this update
                loss.backward(); optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1                         # a skipped step still counts (data order, lr)
            rc.update(step, {"loss": loss.item()})
        save_checkpoint(...)   # rc.stop_reason says why: "steps", "time" or "signal"

SIGINT/SIGTERM only set a flag (a second SIGINT interrupts at once). Under a process group
the time/signal flag is agreed between ranks every `sync_every` steps, and the finiteness of a
loss on every step, so all ranks stop or skip together.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from vq3d.train.distributed import any_rank, is_distributed

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row: the run diverged."""


def _all_finite(value: float | torch.Tensor | Sequence[float | torch.Tensor]) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, torch.Tensor):
            if not bool(torch.isfinite(v.detach()).all()):
                return False
        elif not math.isfinite(float(v)):
            return False
    return True


class RunControl:
    """Step/time/signal stop conditions, a rank-0 progress bar, and a non-finite loss guard."""

    def __init__(
        self,
        total_steps: int,
        max_minutes: float = 0.0,
        start_step: int = 0,
        max_bad_steps: int = 20,
        show_progress: bool = True,
        install_signals: bool = True,
        sync_every: int = 10,
        desc: str = "train",
    ) -> None:
        self.total_steps = total_steps
        self.max_seconds = max_minutes * 60.0 if max_minutes > 0 else math.inf
        self.start_step = start_step
        self.max_bad_steps = max_bad_steps
        self.sync_every = max(1, sync_every)
        self.start_time = time.monotonic()
        self.stop_reason: str | None = None
        self.signal_received: int | None = None
        self.skipped_steps = 0  # non-finite steps skipped in this process's run
        self.bad_in_a_row = 0
        self.last_finite_step: int | None = None
        self._calls = 0
        self._previous_handlers: dict[int, Any] = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
        self._bar = tqdm(
            total=total_steps, initial=start_step, desc=desc, disable=not show_progress,
            dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )

    # -- signals -------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signal_received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, without the checkpoint
        self.signal_received = signum
        if not self._bar.disable:
            self._bar.write(f"received {signal.Signals(signum).name}: stopping after this step")

    def close(self) -> None:
        """Restore the previous signal handlers and close the progress bar."""
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous_handlers.clear()
        self._bar.close()

    def __enter__(self) -> RunControl:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- stopping ------------------------------------------------------------------------

    @property
    def elapsed_minutes(self) -> float:
        return (time.monotonic() - self.start_time) / 60.0

    def should_stop(self, step: int) -> bool:
        """True once `step` (steps done) reaches `total_steps`, time is up, or a signal came.

        Call it once per step on every rank, with the same `step`.
        """
        if step >= self.total_steps:
            self.stop_reason = "steps"
            return True
        timed_out = time.monotonic() - self.start_time >= self.max_seconds
        local = timed_out or self.signal_received is not None
        if is_distributed():
            if step % self.sync_every != 0:
                return False
            if not any_rank(local):
                return False
        elif not local:
            return False
        if self.signal_received is not None:
            self.stop_reason = "signal"
        else:
            self.stop_reason = "time" if timed_out else "signal or time on another rank"
        return True

    # -- non-finite losses ---------------------------------------------------------------

    def record_loss(
        self, value: float | torch.Tensor | Sequence[float | torch.Tensor], step: int | None = None
    ) -> bool:
        """True if `value` (a loss, or several, or a grad norm) is finite: go on with the update.

        False means skip this update (counted in `skipped_steps`). Raises NonFiniteLossError
        after `max_bad_steps` non-finite values in a row. Under a process group every rank gets
        the same answer (all ranks skip if one saw a non-finite value).
        """
        step = self.start_step + self._calls if step is None else step
        self._calls += 1
        finite = not any_rank(not _all_finite(value))
        if finite:
            self.bad_in_a_row = 0
            self.last_finite_step = step
            return True
        self.skipped_steps += 1
        self.bad_in_a_row += 1
        if self.bad_in_a_row >= self.max_bad_steps:
            last = "none yet" if self.last_finite_step is None else str(self.last_finite_step)
            raise NonFiniteLossError(
                f"{self.bad_in_a_row} non-finite losses in a row; last finite step {last}; "
                "lower the learning rate (train.lr), keep gradient clipping on (train.grad_clip) "
                "or train in fp32 (train.precision=fp32), then resume from the last checkpoint"
            )
        return False

    # -- progress ------------------------------------------------------------------------

    def set_total_steps(self, total_steps: int) -> None:
        """A new step bound (a run whose schedule was fitted to its time); the bar follows."""
        self.total_steps = total_steps
        self._bar.total = total_steps
        self._bar.refresh()

    def write(self, message: str) -> None:
        """A line above the progress bar (shown only where the bar is)."""
        if not self._bar.disable:
            self._bar.write(message, file=sys.stderr)

    def update(self, step: int, losses: dict[str, float] | None = None) -> None:
        """Move the bar to `step` (steps done) and show `losses` (and skipped steps) beside it."""
        if self._bar.disable:
            return
        if losses:
            postfix = {k: f"{float(v):.4g}" for k, v in losses.items()}
            if self.skipped_steps:
                postfix["skipped"] = str(self.skipped_steps)
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(step - self._bar.n)
