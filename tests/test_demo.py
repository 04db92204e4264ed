"""`vq3d demo` end to end on the `tiny` preset: every promised artefact, a self-contained page,
restartable phases, and the time budget's arithmetic."""

import base64
import json
import math
import re
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from vq3d.cli import main
from vq3d.config import load_config
from vq3d.demo import run_demo
from vq3d.demo.optional import OptionalSizes
from vq3d.demo.plan import (
    MAX_DEFAULT_SCENES,
    SCENES_PER_MINUTE,
    STAGE1_FRACTION,
    TRAIN_OVERHEAD_SECONDS,
    UnitCosts,
    default_scene_count,
    scale_factor,
    scaled,
    split_training,
)
from vq3d.demo.progress import PhaseDisplay, clock
from vq3d.demo.schedule import Schedule
from vq3d.demo.state import DemoLayout
from vq3d.errors import UserError
from vq3d.report.charts import Series, line_chart
from vq3d.train.logger import read_metrics

torch.set_num_threads(1)

CLASSES = ["sphere", "box", "cylinder", "cone", "torus"]
TINY = dict(preset="tiny", n_scenes=20, views=2, stage1_steps=3, stage2_steps=2, eval_scenes=2,
            recon_scenes=1, samples_per_class=1, frames=2, mesh_resolution=8, progress=False,
            optional=OptionalSizes(features_steps=2, features_minutes=0.05, generation_n=2, radius_n=1,
                                   radii=(0.0, 0.3)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    summary = run_demo(out, minutes=10, started_at=time.time() - SPENT_BEFORE, **TINY)
    return out, summary


SPENT_BEFORE = 30.0  # seconds of the fixture's budget spent before run_demo (as by `make demo`'s install)


def _phases(out):
    return sorted(p.stem for p in (out / "phases").glob("*.json") if "." not in p.stem)


def test_demo_writes_every_promised_artefact(demo):
    out, summary = demo
    assert (out / "data" / "dataset.json").is_file() and (out / "contact_sheet.png").is_file()
    assert json.loads((out / "data" / "dataset.json").read_text())["n_scenes"] == 20
    for stage in ("stage1", "stage2"):
        assert (out / stage / "config.yaml").is_file() and read_metrics(out / stage)
    metrics = json.loads((out / "eval" / "stage1.json").read_text())
    for key in ("novel_view_psnr", "copy_baseline_psnr", "psnr", "depth_accuracy", "disparity_scale"):
        assert math.isfinite(metrics[key])
    held = json.loads((out / "reconstructions" / "heldout.json").read_text())["scenes"]
    assert len(held) == 1
    scene = out / "reconstructions" / held[0]["folder"]
    for name in ("orbit.gif", "mesh.ply", "gt_compare/input.png", "gt_compare/reconstruction.png",
                 "gt_compare/depth_model.png", "gt_compare/depth_gt.png", "gt_compare/novel_1_model.png",
                 "gt_compare/novel_1_gt.png"):
        assert (scene / name).is_file(), name
    generated = json.loads((out / "generated" / "generated.json").read_text())["classes"]
    assert [c["class_name"] for c in generated] == CLASSES
    for cls in CLASSES:
        assert (out / "generated" / cls / "sample_000" / "orbit.gif").is_file()
        samples = json.loads((out / "generated" / cls / "samples.json").read_text())["samples"]
        assert samples[0]["class_name"] == cls
    assert summary["index"] == str(out / "index.html") and (out / "index.html").is_file()
    assert {"synth", "stage1", "eval_stage1", "reconstruct", "tokens", "stage2", "generate", "report"} <= set(
        _phases(out))
    assert not list((out / "phases").glob("*.partial.json"))


def test_training_is_bounded_by_the_given_steps_and_records_its_budget(demo):
    out, _ = demo
    s1 = json.loads((out / "phases" / "stage1.json").read_text())
    s2 = json.loads((out / "phases" / "stage2.json").read_text())
    assert s1["result"]["steps"] == 3 and s1["result"]["stop_reason"] == "steps"
    assert s2["result"]["steps"] == 2 and s2["result"]["stop_reason"] == "steps"
    assert [m["step"] for m in read_metrics(out / "stage1")] == [1, 2, 3]
    plan = json.loads((out / "demo.json").read_text())["plan"]
    assert plan["training_seconds"]["stage1"] > 0 and plan["training_seconds"]["stage2"] > 0
    # the planned split: Stage 1 got stage1_fraction of the training time at the start
    t = plan["training_seconds"]
    assert t["stage1"] / (t["stage1"] + t["stage2"]) == pytest.approx(STAGE1_FRACTION, abs=0.01)
    # the pseudo-depth written before Stage 1 comes out of its budget: the run gets no more than it
    run_minutes = float(re.search(r"--max-minutes ([0-9.]+)", s1["commands"][-1]).group(1))
    assert "vq3d depth" in s1["commands"][0] and run_minutes <= s1["result"]["budget_minutes"]


def test_the_budget_counts_from_started_at(demo):
    out, summary = demo
    state = json.loads((out / "demo.json").read_text())
    assert SPENT_BEFORE <= state["seconds_before_start"] < SPENT_BEFORE + 5
    assert summary["seconds"] >= SPENT_BEFORE
    page = (out / "index.html").read_text()
    assert re.search(r"before the demo \(installing\)</td><td>00:3[0-4]</td>", page)
    plan = state["plan"]
    # what the plan handed out leaves exactly the time spent before it was made: the 30 s
    # before the call, plus the probe
    spent = (plan["total_seconds"] - plan["reserve_seconds"] - sum(plan["fixed_seconds"].values())
             - sum(plan["training_seconds"].values()) - 2 * TRAIN_OVERHEAD_SECONDS)
    assert SPENT_BEFORE <= spent < SPENT_BEFORE + 30


def test_started_at_in_the_future_or_past_the_budget_is_refused(tmp_path, capsys):
    for started_at, message in ((time.time() + 120, "in the future"), (time.time() - 700, "already run out")):
        out = tmp_path / "x"
        assert main(["demo", "--out", str(out), "--minutes", "10", "--started-at", str(started_at)]) == 2
        assert message in capsys.readouterr().err and not out.exists()


def test_a_budget_short_after_its_started_at_suggests_minutes_that_count_the_time_spent(tmp_path):
    args = {k: v for k, v in TINY.items() if k not in ("stage1_steps", "stage2_steps")}

    def suggested(minutes, **kwargs):
        with pytest.raises(UserError, match="--minutes .* too short") as err:
            run_demo(tmp_path / "short", minutes=minutes, **args, **kwargs)
        return float(re.search(r"pass --minutes ([0-9.]+)", str(err.value)).group(1))

    fresh = suggested(0.5)  # what the tiny demo needs from its own start
    assert fresh < 4
    # 5 minutes would do from the start, but 4:50 of them went before the call
    assert suggested(5, started_at=time.time() - 290) >= 290 / 60 + 0.5
    assert not (tmp_path / "short" / "data").exists()


def test_the_cli_help_states_the_stage1_share_and_scene_count_that_the_demo_uses(capsys):
    # the CLI states them as text (vq3d/cli/demo.py must not import torch through vq3d.demo.plan)
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default {STAGE1_FRACTION};" in text
    assert (f"default: {MAX_DEFAULT_SCENES}, or {SCENES_PER_MINUTE} per minute under "
            f"{MAX_DEFAULT_SCENES / SCENES_PER_MINUTE:.1f} minutes") in text
    assert default_scene_count(MAX_DEFAULT_SCENES / SCENES_PER_MINUTE + 1) == MAX_DEFAULT_SCENES


def _data_uris(page, mime):
    return re.findall(rf'src="data:{mime};base64,([A-Za-z0-9+/=]+)"', page)


def test_index_html_is_self_contained_with_every_section(demo):
    out, _ = demo
    page = (out / "index.html").read_text()
    for anchor in ("metrics", "generation-metrics", "radius", "reconstructions", "generated", "curves",
                   "commands", "config", "timing"):
        assert f'<section id="{anchor}">' in page, anchor
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)  # nothing outside the file
    assert "href=\"http" not in page and "<script" not in page
    gifs = _data_uris(page, "image/gif")
    assert len(gifs) == len(CLASSES) + 1  # one orbit per generated scene, one per reconstruction
    orbit = (out / "generated" / "torus" / "sample_000" / "orbit.gif").read_bytes()
    assert base64.b64encode(orbit).decode() in gifs  # the file itself, byte for byte
    for data in _data_uris(page, "image/png")[:5]:
        Image.open(__import__("io").BytesIO(base64.b64decode(data))).verify()
    assert page.count("<svg") >= 3  # Stage-1 loss and PSNR, Stage-2 bits per token
    for command in ("vq3d synth", "vq3d train stage1", "vq3d eval stage1", "vq3d reconstruct", "vq3d tokens",
                    "vq3d train stage2", "vq3d generate", "--class torus"):
        assert command in page, command
    assert "preset: tiny" in page  # the YAML config of both stages
    assert "torus #0" in page and "copy the input" in page


def test_metrics_table_shows_model_and_copy_baseline_side_by_side(demo):
    out, _ = demo
    page = (out / "index.html").read_text()
    metrics = json.loads((out / "eval" / "stage1.json").read_text())
    row = re.search(r"<tr><td>Novel-view PSNR \(dB\)</td><td>([^<]+)</td><td>([^<]+)</td>", page)
    assert row is not None
    assert float(row.group(1)) == pytest.approx(metrics["novel_view_psnr"], rel=1e-3)
    assert float(row.group(2)) == pytest.approx(metrics["copy_baseline_psnr"], rel=1e-3)


def test_every_number_the_demo_evaluated_has_a_human_name_on_the_page(demo):
    from vq3d.report.metric_names import describe

    out, _ = demo
    page = (out / "index.html").read_text()
    files = (out / "eval" / "stage1.json", out / "eval" / "generation.json")
    evaluated = [json.loads(p.read_text()) for p in files if p.is_file()]
    assert evaluated
    for metrics in evaluated:
        numbers = [k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for key in numbers + list(metrics.get("skipped", {})):
            assert describe(key).known, key
            assert f"<td><code>{key}</code></td>" not in page  # how an unknown key would show
    metrics = evaluated[0]
    row = re.search(r"<tr><td>Novel-view PSNR \(dB\)</td>(.*?)</tr>", page).group(1)
    cells = re.findall(r"<td>([^<]*)</td>", row)
    assert float(cells[2]) == pytest.approx(metrics["warp_baseline_psnr"], rel=1e-3)  # model, copy, warp
    assert "<section id=\"not-measured\">" in page


def test_reconstruction_panel_scores_match_the_images_on_disk(demo):
    out, _ = demo
    record = json.loads((out / "reconstructions" / "heldout.json").read_text())["scenes"][0]
    gt = out / "reconstructions" / record["folder"] / "gt_compare"
    load = lambda name: np.asarray(Image.open(gt / name).convert("RGB"), dtype=np.float64)  # noqa: E731
    for k in range(2):  # PSNR of 8-bit images: 10 log10(255^2 / MSE)
        truth = load(f"novel_{k}_gt.png")
        copy = 10 * np.log10(255.0**2 / np.mean((load("input.png") - truth) ** 2))
        assert record["copy_psnr"][k] == pytest.approx(copy, abs=0.05)
        ours = 10 * np.log10(255.0**2 / np.mean((load(f"novel_{k}_model.png") - truth) ** 2))
        assert record["novel_psnr"][k] == pytest.approx(ours, abs=0.3)  # renders are quantized on disk


def test_rerun_skips_every_finished_phase(demo, capsys):
    out, _ = demo
    before = {p: (out / "phases" / f"{p}.json").read_text() for p in _phases(out) if p != "report"}
    checkpoints = sorted(p.name for p in (out / "stage1" / "checkpoints").iterdir())
    start = time.monotonic()
    run_demo(out, minutes=10, **TINY)
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert err.count("done earlier, skipped") == len(before)
    assert before == {p: (out / "phases" / f"{p}.json").read_text() for p in before}
    assert sorted(p.name for p in (out / "stage1" / "checkpoints").iterdir()) == checkpoints
    assert "write index.html" in err and (out / "index.html").is_file()


def test_rerun_with_other_settings_is_refused(demo, tmp_path):
    out, _ = demo
    with pytest.raises(UserError, match="n_scenes"):
        run_demo(out, minutes=10, **{**TINY, "n_scenes": 30})
    with pytest.raises(UserError, match="already holds a demo"):
        run_demo(out, minutes=10, resume=False, **TINY)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        run_demo(tmp_path / "other", minutes=10, **TINY)


def test_killed_training_resumes_from_its_checkpoint_with_what_is_left_of_its_budget(demo, tmp_path):
    from vq3d.train.stage2 import train_stage2

    out = tmp_path / "copy"
    shutil.copytree(demo[0], out)
    # as if the demo was killed one step into Stage 2, 5 s into a 60 s budget
    (out / "phases" / "stage2.json").unlink()
    shutil.rmtree(out / "stage2")
    cfg = load_config("tiny", [], ["stage2.steps=1", "train.seed=0", "train.device=cpu"])
    train_stage2(cfg, out / "tokens", out / "stage2", stage1_run=out / "stage1")
    partial = {"budget_seconds": 60.0, "spent_seconds": 5.0, "spent_before": 0.0,
               "commands": ["first command"]}
    (out / "phases" / "stage2.partial.json").write_text(json.dumps(partial))
    run_demo(out, minutes=10, **TINY)
    marker = json.loads((out / "phases" / "stage2.json").read_text())
    assert marker["result"]["steps"] == 2 and marker["seconds"] >= 5.0
    assert marker["commands"][0] == "first command" and "--resume" in marker["commands"][1]
    assert "--max-minutes 0.917" in marker["commands"][1]  # (60 - 5) s left
    assert [m["step"] for m in read_metrics(out / "stage2") if "loss" in m] == [1, 2]


def test_ctrl_c_in_training_stops_the_demo_and_keeps_the_stage_resumable(demo, tmp_path, monkeypatch):
    import vq3d.train.stage1 as stage1_module

    out = tmp_path / "copy"
    shutil.copytree(demo[0], out)
    (out / "phases" / "stage1.json").unlink()
    monkeypatch.setattr(stage1_module, "train_stage1", lambda *a, **k: {"stop_reason": "signal"})
    with pytest.raises(KeyboardInterrupt):
        run_demo(out, minutes=10, **TINY)
    assert not (out / "phases" / "stage1.json").exists()
    partial = json.loads((out / "phases" / "stage1.partial.json").read_text())
    assert "--resume" in partial["commands"][-1] and partial["spent_seconds"] > 0


def test_too_short_a_budget_is_refused_before_any_work(tmp_path):
    args = {k: v for k, v in TINY.items() if k not in ("stage1_steps", "stage2_steps")}
    with pytest.raises(UserError, match="--minutes .* too short"):
        run_demo(tmp_path / "short", minutes=0.1, **args)
    assert not (tmp_path / "short" / "data").exists()


def test_cli_rejects_bad_minutes(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "x"), "--minutes", "0"]) == 2
    assert "--minutes" in capsys.readouterr().err


def test_budget_split_gives_each_stage_its_fraction_of_what_fixed_phases_leave():
    s1, s2 = split_training(seconds_left=900, fixed_left=200, stage1_fraction=0.7, reserve_seconds=30)
    training = 900 - 200 - 30 - 2 * TRAIN_OVERHEAD_SECONDS
    assert s1 == pytest.approx(0.7 * training) and s2 == pytest.approx(0.3 * training)


def test_fixed_phases_shrink_only_when_they_would_exceed_their_share():
    estimates = {"synth": 20.0, "tokens": 10.0, "eval_stage1": 100.0, "generate": 70.0}
    assert scale_factor(estimates, 1000.0, share=0.35) == 1.0  # 200 <= 350
    factor = scale_factor(estimates, 400.0, share=0.35)  # room 140 - 30 = 110 for 170 s of scalable work
    assert factor == pytest.approx(110 / 170)
    assert scale_factor(estimates, 50.0, share=0.35) == 0.0
    assert scaled(200, 0.25, 20) == 50 and scaled(200, 0.01, 20) == 20 and scaled(4, 0.1, 8) == 4
    assert scale_factor(estimates, 400.0, share=0.35, scalable_phases=("generate",)) == pytest.approx(
        (140 - 130) / 70)


def test_default_dataset_shrinks_with_short_budgets():
    assert default_scene_count(15) == default_scene_count(14) == 4000 and default_scene_count(10) == 3000
    assert default_scene_count(3) == 900 and default_scene_count(0.5) == 200


def _schedule(tmp_path, minutes, done=(), optional=()):
    """A Schedule over a fake demo folder whose phases `done` have finished (with the optional
    phases `optional` listed after `generate`)."""
    layout = DemoLayout(tmp_path)
    for name in done:
        layout.marker(name).parent.mkdir(parents=True, exist_ok=True)
        record = {"phase": name, "seconds": 1.0, "result": {}, "commands": []}
        layout.marker(name).write_text(json.dumps(record))
    settings = {"n_scenes": 2000, "resolution": 32, "views": 4, "eval_scenes": 200, "recon_scenes": 4,
                "samples_per_class": 2, "frames": 24, "mesh_resolution": 32, "device": "cpu",
                "minutes": minutes,
                "stage1_fraction": 0.7, "stage1_minutes": None, "stage2_minutes": None, "stage1_steps": None,
                "stage2_steps": None}
    names = ["synth", "stage1", "eval_stage1", "reconstruct", "tokens", "stage2", "generate",
             *optional, "eval_generation", "report"]
    display = PhaseDisplay([(n, n) for n in names], enabled=False)
    schedule = Schedule(layout, load_config("demo"), settings, OptionalSizes(), names, display)
    schedule.costs = UnitCosts(render_batched=0.05, render_single=0.1, encode=0.01, sample_sequence=0.5,
                               probe_seconds=1.0)
    schedule._publish(schedule.estimates())
    return schedule, display


def test_a_short_budget_shrinks_the_fixed_phases_to_their_share(tmp_path):
    schedule, _ = _schedule(tmp_path, minutes=5)
    before = sum(schedule.estimates().values())
    after = sum(schedule.shrink(schedule.estimates(), 300.0, 0.35).values())
    assert after < before and schedule.sizes["eval_scenes"] < 200
    roomy, _ = _schedule(tmp_path / "roomy", minutes=60)
    roomy.shrink(roomy.estimates(), 3600.0, 0.35)
    assert roomy.sizes == {"eval_scenes": 200, "recon_scenes": 4, "samples_per_class": 2, "frames": 24}


def test_shrinking_never_raises_the_feature_nets_minutes(tmp_path):
    schedule, _ = _schedule(tmp_path, minutes=5)
    schedule.optional = OptionalSizes(features_minutes=0.05)  # already under the shrink's 0.1 floor
    schedule.shrink(schedule.estimates(), 60.0, 0.35)
    assert schedule.optional.features_minutes == 0.05
    roomy, _ = _schedule(tmp_path / "roomy", minutes=5)
    roomy.shrink(roomy.estimates(), 60.0, 0.35)  # the default 0.5 shrinks, to the floor at most
    assert 0.1 <= roomy.optional.features_minutes < 0.5


def test_behind_schedule_optional_metrics_are_skipped_and_samples_shrink(tmp_path):
    done = ["synth", "stage1", "eval_stage1", "reconstruct", "tokens", "stage2"]
    schedule, display = _schedule(tmp_path, minutes=2, done=done)
    display.finished.update(done)
    display.started = time.monotonic() - 100.0  # 100 s of a 120 s budget gone
    assert schedule.before_fixed_phase("generate")  # a core phase runs, smaller
    assert schedule.sizes["samples_per_class"] == 1 and schedule.sizes["frames"] == 6
    assert not schedule.before_fixed_phase("eval_generation")  # an optional one is dropped
    display.started = time.monotonic()  # with time to spare both run at full size
    fresh, _ = _schedule(tmp_path / "fresh", minutes=60, done=done)
    assert fresh.before_fixed_phase("eval_generation") and fresh.sizes["frames"] == 24


def test_slow_fixed_phases_raise_the_estimates_of_those_to_come(tmp_path):
    schedule, display = _schedule(tmp_path, minutes=15)
    generate_before = display.estimates["generate"]
    estimate = display.estimates["eval_stage1"]
    schedule.after_fixed_phase("eval_stage1", 3 * estimate)
    assert schedule.slowdown == pytest.approx(3.0)
    assert display.estimates["generate"] == pytest.approx(3 * generate_before)


def test_the_feature_nets_minutes_neither_scale_nor_set_the_slowdown(tmp_path):
    schedule, display = _schedule(tmp_path, minutes=15, optional=("features",))
    box = schedule.optional.features_minutes * 60.0
    features = display.estimates["features"]
    assert features > box  # reading the views, then the time box
    schedule.after_fixed_phase("features", 2 * features)  # bound by its own clock: says nothing
    assert schedule.slowdown == 1.0
    schedule.after_fixed_phase("eval_stage1", 3 * display.estimates["eval_stage1"])
    assert schedule.slowdown == pytest.approx(3.0)
    assert display.estimates["features"] == pytest.approx(3 * (features - box) + box)


def test_a_slow_synth_phase_leaves_the_model_phases_estimates_alone(tmp_path):
    schedule, display = _schedule(tmp_path, minutes=15)
    schedule.costs.synth_scene = 0.01  # 20 s for 2,000 scenes
    schedule._publish(schedule.estimates())
    before = dict(display.estimates)
    schedule.after_fixed_phase("synth", 3 * display.estimates["synth"])
    assert schedule.slowdown == 1.0
    assert display.estimates["eval_stage1"] == before["eval_stage1"]


def test_phase_display_ticks_with_elapsed_and_eta():
    phases = [("a", "first"), ("b", "second"), ("c", "third")]
    display = PhaseDisplay(phases, tick_seconds=0.05, enabled=False)
    for name, seconds in (("a", 10.0), ("b", 100.0), ("c", 30.0)):
        display.set_estimate(name, seconds)
    assert display.eta_total("b", 40.0) == pytest.approx(60.0 + 30.0)
    ticks = []
    with display.phase("b", on_tick=ticks.append):
        time.sleep(0.25)
    assert ticks and all(0 < t < 1 for t in ticks)
    assert display.lines[0].startswith("[2/3] second")
    assert "00:00 / ~01:40, ETA total 02:10" in display.lines[0]
    assert "done in 00:00" in display.lines[-1]
    assert clock(3725) == "1:02:05" and clock(65) == "01:05"


def test_line_chart_maps_values_monotonically_and_drops_gaps():
    svg = line_chart([Series("loss", [1, 2, 3, 4], [4.0, float("nan"), 2.0, 1.0])], "t", "step", "loss")
    points = [tuple(map(float, p.split(","))) for p in re.search(r'points="([^"]+)"', svg).group(1).split()]
    assert len(points) == 3  # the NaN is dropped
    xs, ys = zip(*points)
    assert xs == tuple(sorted(xs)) and ys == tuple(sorted(ys))  # SVG y grows downwards as the loss falls
    assert "nothing logged" in line_chart([Series("x", [], [])], "empty", "s", "v")


def test_probe_times_the_synth_ray_caster_and_its_file_writing(monkeypatch, tmp_path):
    import vq3d.data.synthetic_writer as writer
    from vq3d.demo.plan import SYNTH_PROBE_SCENES, DemoSizes, estimate_fixed_seconds, probe_costs

    log = tmp_path / "written.txt"  # a file: the probe's scenes may be written by forked workers
    real_write = writer.write_scene_files

    def slow_write(root, record, images, depth):  # each scene's files take at least 20 ms
        time.sleep(0.02)
        with open(log, "a") as file:
            file.write(f"{record['index']}\n")
        real_write(root, record, images, depth)

    monkeypatch.setattr(writer, "write_scene_files", slow_write)
    costs = probe_costs(load_config("tiny"))
    written = sorted(int(line) for line in log.read_text().split())
    assert written == list(range(1 + SYNTH_PROBE_SCENES))  # a warm-up scene, then the timed ones
    assert costs.synth_scene >= 0.02 / writer.default_workers()  # the files' time, shared by the workers
    assert 0 < costs.canonical_read < costs.scene_read  # a scene's 1 view against its 1 + 4 (tiny: 4 views)
    sizes = DemoSizes(n_scenes=100, resolution=16, views=4, eval_scenes=10, recon_scenes=1, generated=5, classes=5,
                      frames=6, mesh_resolution=8, samples_per_ray=16, synth_done=40)
    assert estimate_fixed_seconds(sizes, costs)["synth"] == pytest.approx(60 * costs.synth_scene)


def test_probe_keeps_the_least_of_repeated_timings(monkeypatch):
    import vq3d.models.sampling as sampling
    from vq3d.demo.plan import EVAL_BATCH, PROBE_REPEATS, probe_costs

    calls = []

    def sample_slow_once(*args, **kwargs):  # the first call catches a slow moment of the machine
        calls.append(1)
        time.sleep(0.3 if len(calls) == 1 else 0.02)

    monkeypatch.setattr(sampling, "sample", sample_slow_once)
    costs = probe_costs(load_config("tiny"))
    assert len(calls) == PROBE_REPEATS + 1 >= 3  # and one batch of EVAL_BATCH, timed once
    assert 0.02 <= costs.sample_sequence < 0.2
    assert costs.sample_batched == pytest.approx(0.02 / EVAL_BATCH, rel=0.5)
