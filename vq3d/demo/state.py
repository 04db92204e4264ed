"""Where the demo keeps everything, and which phases are finished (restartable runs).

    DIR/demo.json                 settings, the unit costs measured, the plan (written at every start)
    DIR/phases/NAME.json          marker of a finished phase: seconds, result, equivalent commands
    DIR/phases/NAME.partial.json  a training phase under way: its budget, the seconds spent so far
                                  and the commands run so far (a killed demo resumes from these)
    DIR/phases/NAME.skipped.json  an optional phase skipped to keep to the time budget, and why
    DIR/data/ DIR/contact_sheet.png DIR/stage1/ DIR/eval/ DIR/reconstructions/ DIR/tokens/
    DIR/stage2/ DIR/generated/CLASS/ DIR/features/ DIR/index.html
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vq3d.errors import UserError
from vq3d.utils.io import atomic_write_json

# settings that must match for a rerun to continue the outputs already in DIR
RESUME_KEYS = ("preset", "n_scenes", "resolution", "views", "seed", "config_files", "overrides",
               "stage1_steps", "stage2_steps")


@dataclass(frozen=True)
class DemoLayout:
    """Paths of a demo folder."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def depth(self) -> Path:
        """Estimator-like pseudo-GT disparity of the synthetic scenes (a depth cache)."""
        return self.root / "depth"

    @property
    def contact_sheet(self) -> Path:
        return self.root / "contact_sheet.png"

    @property
    def stage1(self) -> Path:
        return self.root / "stage1"

    @property
    def stage2(self) -> Path:
        return self.root / "stage2"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def reconstructions(self) -> Path:
        return self.root / "reconstructions"

    @property
    def generated(self) -> Path:
        return self.root / "generated"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def index(self) -> Path:
        return self.root / "index.html"

    @property
    def state(self) -> Path:
        return self.root / "demo.json"

    def marker(self, phase: str) -> Path:
        return self.root / "phases" / f"{phase}.json"

    def partial(self, phase: str) -> Path:
        return self.root / "phases" / f"{phase}.partial.json"

    def skipped(self, phase: str) -> Path:
        return self.root / "phases" / f"{phase}.skipped.json"


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when there is none."""
    return json.loads(path.read_text()) if path.is_file() else None


def finished(layout: DemoLayout, phase: str) -> dict[str, Any] | None:
    """The marker of `phase` when it finished, else None."""
    return read_json(layout.marker(phase))


def mark_finished(layout: DemoLayout, phase: str, seconds: float, result: dict[str, Any],
                  commands: list[str]) -> dict[str, Any]:
    """Write `phase`'s marker (atomically, after its outputs) and drop its partial record."""
    record = {"phase": phase, "seconds": round(seconds, 2), "result": result, "commands": commands}
    atomic_write_json(layout.marker(phase), record)
    layout.partial(phase).unlink(missing_ok=True)
    layout.skipped(phase).unlink(missing_ok=True)
    return record


def check_resumable(layout: DemoLayout, settings: dict[str, Any], resume: bool) -> None:
    """UserError when DIR holds another demo's outputs, or any outputs while `resume` is off."""
    old = read_json(layout.state)
    if old is None:
        if not layout.root.exists() or not any(layout.root.iterdir()):
            return
        raise UserError(f"{layout.root} is not empty and holds no demo (no demo.json): "
                        "choose a new --out folder")
    if not resume:
        raise UserError(f"{layout.root} already holds a demo: drop --no-resume to continue it, "
                        "or choose a new --out folder")
    was = old.get("settings", {})
    differ = [k for k in RESUME_KEYS if was.get(k) != settings.get(k)]
    if differ:
        found = ", ".join(f"{k}={was.get(k)!r}" for k in differ)
        asked = ", ".join(f"{k}={settings.get(k)!r}" for k in differ)
        raise UserError(f"{layout.root} holds a demo made with {found} but this run asks for {asked}: "
                        "rerun with the same settings to continue it, or choose a new --out folder")
