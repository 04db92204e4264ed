"""`vq3d demo`: synthetic data -> Stage 1 -> evaluation -> held-out reconstructions -> tokens ->
Stage 2 -> class-conditional samples -> (optional metrics) -> DIR/index.html, within a time budget.

Every phase calls the same library function as its `vq3d` command, and records the equivalent
command line. A finished phase leaves a marker (`state.py`) and is skipped by a rerun; a training
phase that was killed resumes from its last checkpoint with what is left of its budget. The page
is rebuilt on every run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from vq3d.config import Config, RenderConfig, load_config
from vq3d.demo import plan
from vq3d.demo.optional import OptionalSizes, available_phases, run_optional
from vq3d.demo.progress import PhaseDisplay, clock
from vq3d.demo.schedule import TRAINING, Schedule
from vq3d.demo.state import DemoLayout, check_resumable, finished, mark_finished, read_json
from vq3d.demo.training import record_spent, train_stage
from vq3d.demo.training import shell_quote as _q
from vq3d.errors import UserError
from vq3d.utils.io import atomic_write_json

CORE_PHASES = [
    ("synth", "synthetic data"),
    ("stage1", "train stage 1"),
    ("eval_stage1", "evaluate stage 1"),
    ("reconstruct", "reconstruct held-out"),
    ("tokens", "encode tokens"),
    ("stage2", "train stage 2"),
    ("generate", "generate scenes"),
]


class Demo:
    """One demo run in a folder: settings, plan, display and the phases."""

    def __init__(self, layout: DemoLayout, cfg: Config, settings: dict[str, Any], sets: list[str],
                 optional: OptionalSizes, device: str, progress: bool, tick_seconds: float) -> None:
        self.layout, self.cfg, self.settings, self.sets = layout, cfg, settings, sets
        self.device, self.progress = device, progress
        phases = CORE_PHASES + available_phases() + [("report", "write index.html")]
        self.names = [name for name, _ in phases]
        self.display = PhaseDisplay(phases, tick_seconds=tick_seconds)
        self.schedule = Schedule(layout, cfg, settings, optional, self.names, self.display)
        self.records: dict[str, dict[str, Any]] = {}

    @property
    def sizes(self) -> dict[str, int]:
        return self.schedule.sizes

    # -- running -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        for name in self.names:
            record = finished(self.layout, name) if name != "report" else None
            if record is not None:
                self.display.skip(name)
                self.records[name] = record
            elif name not in TRAINING and not self.schedule.before_fixed_phase(name):
                reason = "skipped: the demo is behind its time budget (rerun with more --minutes to add it)"
                atomic_write_json(self.layout.skipped(name), {"phase": name, "reason": reason})
                self.display.skip(name, reason)
            else:
                self.records[name] = self._run_phase(name)
        return self.records

    def _run_phase(self, name: str) -> dict[str, Any]:
        on_tick = None
        if name in TRAINING:
            budget = self.schedule.start_training(name)
            on_tick = lambda elapsed: record_spent(self.layout, name, elapsed)  # noqa: E731
        start = time.monotonic()
        try:
            with self.display.phase(name, on_tick=on_tick):
                if name in TRAINING:
                    result, commands = train_stage(self.layout, name, budget, self.settings, self.sets)
                elif name == "report":
                    result, commands = self._report(), []
                elif hasattr(self, f"_phase_{name}"):
                    result, commands = getattr(self, f"_phase_{name}")()
                else:
                    result, commands = run_optional(name, self.layout, self.schedule.optional,
                                                    self.settings["seed"], self.device, self.progress)
        finally:
            if on_tick is not None:
                on_tick(time.monotonic() - start)  # a killed or stopped stage keeps count of its time
        seconds = time.monotonic() - start
        if name in TRAINING:
            partial = read_json(self.layout.partial(name)) or {}
            seconds += partial.get("spent_before", 0.0)
            commands = partial.get("commands", []) + commands
        record = mark_finished(self.layout, name, seconds, result, commands)
        if name not in TRAINING:
            self.schedule.after_fixed_phase(name, time.monotonic() - start)
        return record

    # -- fixed phases --------------------------------------------------------------------------

    def _phase_synth(self) -> tuple[dict[str, Any], list[str]]:
        from vq3d.data.synthetic import CameraSettings
        from vq3d.data.synthetic_dataset import write_contact_sheet
        from vq3d.data.synthetic_writer import generate_dataset

        s, lay, r = self.settings, self.layout, self.cfg.render
        camera = CameraSettings(r.camera_distance, r.fov_deg, r.sampling_radius)
        card = generate_dataset(lay.data, s["n_scenes"], s["resolution"], s["views"], s["seed"], camera,
                                progress=self.progress)
        write_contact_sheet(lay.data, lay.contact_sheet, 8)
        default = RenderConfig()
        extra = "".join(f" --{flag} {value:g}" for flag, value, base in (
            ("camera-distance", r.camera_distance, default.camera_distance),
            ("fov-deg", r.fov_deg, default.fov_deg),
            ("sampling-radius", r.sampling_radius, default.sampling_radius)) if value != base)
        command = (f"vq3d synth --out {_q(lay.data)} --n {s['n_scenes']} --res {s['resolution']} "
                   f"--views {s['views']} --seed {s['seed']}{extra} --contact-sheet {_q(lay.contact_sheet)}")
        return {k: card[k] for k in ("n_scenes", "n_train", "n_test")}, [command]

    def _phase_eval_stage1(self) -> tuple[dict[str, Any], list[str]]:
        from vq3d.eval.stage1 import evaluate_stage1

        lay, n = self.layout, self.sizes["eval_scenes"]
        metrics = evaluate_stage1(lay.stage1, lay.data, split="test", max_scenes=n, device=self.device)
        atomic_write_json(lay.eval / "stage1.json", metrics)
        command = (f"vq3d eval stage1 --run {_q(lay.stage1)} --data {_q(lay.data)} --max-scenes {n} --json "
                   f"> {_q(lay.eval / 'stage1.json')}")
        return {"scenes": metrics.get("scenes"), "file": str(lay.eval / "stage1.json")}, [command]

    def _phase_reconstruct(self) -> tuple[dict[str, Any], list[str]]:
        from vq3d.data.synthetic_dataset import SyntheticDataset
        from vq3d.demo.heldout import compare_with_ground_truth
        from vq3d.reconstruct import reconstruct

        lay, s = self.layout, {**self.settings, **self.sizes}
        records = SyntheticDataset(lay.data, split="test").records[: s["recon_scenes"]]
        files = [lay.data / rec["image"] for rec in records]
        summary = reconstruct(lay.stage1, files, lay.reconstructions, n_frames=s["frames"],
                              mesh_resolution=s["mesh_resolution"], device=self.device)
        folder_of = {item["input"]: lay.reconstructions / item["folder"] for item in summary["images"]}
        folders = {i: folder_of[str(f)] for i, f in enumerate(files) if str(f) in folder_of}
        compared = compare_with_ground_truth(lay.stage1, lay.data, folders, self.device)
        atomic_write_json(lay.reconstructions / "heldout.json", {"scenes": compared})
        command = (f"vq3d reconstruct --stage1 {_q(lay.stage1)} {' '.join(_q(f) for f in files)} "
                   f"--out {_q(lay.reconstructions)} --frames {s['frames']} "
                   f"--mesh-res {s['mesh_resolution']}")
        note = ("# ground-truth panels (gt_compare/): vq3d.demo.heldout.compare_with_ground_truth "
                "(Python only, no CLI)")
        return {"scenes": len(compared)}, [command, note]

    def _phase_tokens(self) -> tuple[dict[str, Any], list[str]]:
        from vq3d.data.tokens import extract_tokens

        lay = self.layout
        info = extract_tokens(lay.stage1, str(lay.data), lay.tokens, split="train", device=self.device)
        return ({k: info[k] for k in ("count", "seq_len", "codebook_size", "num_classes")},
                [f"vq3d tokens --stage1 {_q(lay.stage1)} --data {_q(lay.data)} --out {_q(lay.tokens)}"])

    def _phase_generate(self) -> tuple[dict[str, Any], list[str]]:
        from vq3d.data.tokens import read_token_info
        from vq3d.generate import generate

        lay, s = self.layout, {**self.settings, **self.sizes}
        class_names = read_token_info(lay.tokens)["class_names"]
        classes, commands = [], []
        for k, name in enumerate(class_names):
            out = lay.generated / name
            records = generate(lay.stage1, lay.stage2, out, s["samples_per_class"], class_label=name,
                               seed=s["seed"] + k, n_frames=s["frames"], device=self.device)
            classes.append({"class_name": name, "folder": name, "samples": [r["folder"] for r in records]})
            commands.append(f"vq3d generate --stage1 {_q(lay.stage1)} --stage2 {_q(lay.stage2)} "
                            f"--class {_q(name)} -n {s['samples_per_class']} --seed {s['seed'] + k} "
                            f"--frames {s['frames']} --out {_q(out)}")
        atomic_write_json(lay.generated / "generated.json", {"classes": classes})
        return {"classes": len(classes), "samples": sum(len(c["samples"]) for c in classes)}, commands

    def _report(self) -> dict[str, Any]:
        from vq3d.report import build_report

        phases = [(n, self.display.titles[n]) for n in self.names if n != "report"]
        return {"index": str(build_report(self.layout.root, self.display.lines, phases))}


def _validate(minutes: float, n_scenes: int, views: int, stage1_fraction: float, counts: dict[str, int],
              explicit: dict[str, float | None], steps: dict[str, int | None]) -> None:
    if minutes <= 0:
        raise UserError(f"--minutes {minutes:g}: the time budget must be positive, e.g. --minutes 15")
    if n_scenes < 10:
        raise UserError(f"--scenes {n_scenes}: need at least 10 (every 10th scene is held out for "
                        "evaluation)")
    if views < 1:
        raise UserError(f"--views {views}: need at least one novel view per scene for the novel-view metrics")
    if not 0.0 < stage1_fraction < 1.0:
        raise UserError(f"stage1_fraction {stage1_fraction}: must lie strictly between 0 and 1")
    for key, value in counts.items():
        if value < 0 or (value == 0 and key != "eval_scenes"):
            raise UserError(f"{key} {value}: must be positive")
    for key, value in explicit.items():
        if value is not None and value <= 0:
            raise UserError(f"--{key.replace('_', '-')} {value:g}: must be positive")
    for key, value in steps.items():
        if value is not None and value < 1:
            raise UserError(f"--{key.replace('_', '-')} {value}: must be positive")


def _seconds_before(started_at: float | None, minutes: float) -> float:
    """Seconds of the budget spent before this call (0 without `started_at`)."""
    if started_at is None:
        return 0.0
    before = time.time() - started_at
    if before < -1.0:  # `date +%s` rounds down, so the same clock never reads a later start
        raise UserError(f"--started-at {started_at:.0f} is {-before:.0f} s in the future")
    if before >= minutes * 60.0:
        raise UserError(f"--started-at {started_at:.0f} is {before / 60:.1f} minutes ago: --minutes "
                        f"{minutes:g} from then has already run out")
    return max(0.0, before)


def run_demo(out_dir: str | Path, minutes: float = 15.0, preset: str = "demo",
             stage1_minutes: float | None = None, stage2_minutes: float | None = None,
             n_scenes: int | None = None, resolution: int | None = None, seed: int = 0, resume: bool = True,
             *, views: int = 4,
             stage1_steps: int | None = None, stage2_steps: int | None = None, stage1_fraction: float | None = None,
             eval_scenes: int = 200,
             recon_scenes: int = 4, samples_per_class: int = 2, frames: int = 24, mesh_resolution: int = 32,
             optional: OptionalSizes | None = None, config_files: list[str] = (), overrides: list[str] = (),
             device: str = "cpu", progress: bool = True, tick_seconds: float = 30.0,
             started_at: float | None = None) -> dict[str, Any]:
    """Run (or continue) the whole demo in `out_dir` within about `minutes`; returns a summary.

    `started_at` (a UNIX time, None: now) is when the budget began: `make demo` passes the moment
    it started, so that installing counts against the minutes a newcomer waits.

    `n_scenes` None: the dataset already in `out_dir`, else `plan.default_scene_count(minutes)`.

    Budget: unit costs are measured on this machine (`plan.probe_costs`), the fixed phases are
    estimated from the scene and sample counts, and Stage 1 gets `stage1_fraction` (None:
    `plan.STAGE1_FRACTION`) of the rest,
    Stage 2 what is left when it starts (`stage1_minutes` / `stage2_minutes` fix them instead;
    `stage1_steps` / `stage2_steps` bound the steps as well). Returns {"out", "index", "phases":
    {name: marker}, "stage1_metrics", "plan", "seconds"}.
    """
    started = time.monotonic()
    stage1_fraction = plan.STAGE1_FRACTION if stage1_fraction is None else stage1_fraction
    layout = DemoLayout(Path(out_dir))
    if n_scenes is None:  # a rerun keeps the dataset it made, whatever --minutes says now
        previous = (read_json(layout.state) or {}).get("settings", {})
        n_scenes = previous.get("n_scenes") or plan.default_scene_count(minutes)
    _validate(minutes, n_scenes, views, stage1_fraction,
              {"samples_per_class": samples_per_class, "recon_scenes": recon_scenes, "frames": frames,
               "mesh_resolution": mesh_resolution, "eval_scenes": eval_scenes},
              {"stage1_minutes": stage1_minutes, "stage2_minutes": stage2_minutes},
              {"stage1_steps": stage1_steps, "stage2_steps": stage2_steps})
    before = _seconds_before(started_at, minutes)
    started -= before
    sets = list(overrides) + ([f"data.resolution={resolution}"] if resolution is not None else [])
    sets += [f"train.seed={seed}", f"train.device={device}"]
    cfg = load_config(preset, list(config_files), [*sets, f"data.path={layout.data}"])
    settings = {
        "preset": preset, "n_scenes": n_scenes, "resolution": cfg.data.resolution, "views": views,
        "seed": seed,
        "config_files": [str(f) for f in config_files], "overrides": list(overrides),
        "stage1_steps": stage1_steps, "stage2_steps": stage2_steps, "minutes": minutes,
        "stage1_minutes": stage1_minutes, "stage2_minutes": stage2_minutes,
        "stage1_fraction": stage1_fraction,
        "eval_scenes": eval_scenes, "recon_scenes": recon_scenes, "samples_per_class": samples_per_class,
        "frames": frames, "mesh_resolution": mesh_resolution, "device": device, "out": str(out_dir),
    }
    check_resumable(layout, settings, resume)
    layout.root.mkdir(parents=True, exist_ok=True)
    demo = Demo(layout, cfg, settings, sets, optional or OptionalSizes(), device, progress, tick_seconds)
    demo.display.started = started
    if before > 0:
        demo.display.write(f"the {minutes:g} minutes count from --started-at: {clock(before)} (mm:ss) spent "
                           f"before this command (installing), {clock(minutes * 60.0 - before)} left")
    plan_info = demo.schedule.make_plan()
    state = {"settings": settings, "plan": plan_info, "torch_threads": torch.get_num_threads(),
             "torch_version": torch.__version__, "command": demo_command(settings),
             "seconds_before_start": round(before, 1)}
    atomic_write_json(layout.state, state)
    demo.display.write(demo.schedule.describe(plan_info))
    records = demo.run()
    metrics = read_json(layout.eval / "stage1.json") or {}
    return {"out": str(layout.root), "index": str(layout.index), "phases": records, "stage1_metrics": metrics,
            "plan": plan_info, "seconds": time.monotonic() - started}


# `vq3d demo` flags whose value differs from these defaults appear in the recorded command
FLAG_DEFAULTS = {"views": 4, "stage1_fraction": plan.STAGE1_FRACTION, "eval_scenes": 200, "recon_scenes": 4,
                 "samples_per_class": 2, "frames": 24, "mesh_resolution": 32, "device": "cpu"}
FLAG_NAMES = {"mesh_resolution": "mesh-res"}


def demo_command(settings: dict[str, Any]) -> str:
    """The `vq3d demo` command line that these settings come from."""
    s = settings
    parts = [f"vq3d demo --out {_q(s['out'])} --minutes {s['minutes']:g} --preset {s['preset']} "
             f"--scenes {s['n_scenes']} --res {s['resolution']} --seed {s['seed']}"]
    for key in ("stage1_minutes", "stage2_minutes", "stage1_steps", "stage2_steps"):
        if s[key] is not None:
            parts.append(f"--{key.replace('_', '-')} {s[key]:g}")
    for key, default in FLAG_DEFAULTS.items():
        if s[key] != default:
            parts.append(f"--{FLAG_NAMES.get(key, key.replace('_', '-'))} {_q(s[key])}")
    parts += [f"--config {_q(f)}" for f in s["config_files"]] + [f"--set {_q(x)}" for x in s["overrides"]]
    return " ".join(parts)
