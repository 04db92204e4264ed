"""The demo's time budget: measured unit costs -> estimated fixed phases -> minutes per training stage.

    costs = probe_costs(cfg)                       # seconds per render, encode, sampled sequence
    fixed = estimate_fixed_seconds(sizes, costs)   # {"synth": 30.0, "eval_stage1": 40.0, ...}
    s1, s2 = split_training(seconds_left, fixed_left, stage1_fraction)

The split is the same at every point of a run: Stage 1 gets `stage1_fraction` of what is left for
training once the estimated fixed phases (everything but the two training loops) and a reserve are
subtracted; Stage 2 gets whatever is left when it starts. The estimate of each fixed phase is
(number of renders, encodes, samples it does) x (the unit cost measured on this machine with the
run's own model sizes, untrained), so a busy machine or a larger preset plans for itself.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from vq3d.config import Config
from vq3d.data.synthetic_writer import split_counts

# scenes ray-cast and written to time the synth phase (after one warm-up scene): a scene's cost
# varies 3x with its shapes, so 3 scenes read 4.6 ms where 2,000 took 8.1 ms a scene (its file
# writing was not timed either), and the slowdown that followed took 48 s from Stage 1; and the
# worker processes' start and uneven last chunks weigh on few scenes (20 read 11.2 ms a scene on
# 2 cores, where the phase's 4,450 took 6.9 ms): 64 are 4 chunks for each of 2 workers
SYNTH_PROBE_SCENES = 64
# the probe's model timings are the least of this many calls: single calls on a shared 2-core
# machine planned 2:13 for fixed phases that took 1:42 (each minute overestimated is 48 s that
# Stage 1 hands to Stage 2, which gains nothing from it past ~700 steps)
PROBE_REPEATS = 3
EVAL_BATCH = 16  # the evaluations' batch size (`vq3d eval ... --batch-size` default)
# set aside per training stage beyond its --max-minutes: the process's start-up and last step's
# overrun (the run's own start-up, checkpoints and validation fit within its minutes: Stage 1 took
# 521 s of a 545 s budget on a fresh-clone demo, Stage 2 126 s of 188)
TRAIN_OVERHEAD_SECONDS = 5.0
REPORT_SECONDS = 1.0  # the page took 0.1 s in fresh-clone demos
# the first import of trimesh and scikit-image's marching cubes (the mesh export), which a fresh
# install has not byte-compiled: 3.5 s of the reconstructions' 8.3 s on a 2-core machine
MESH_IMPORT_SECONDS = 4.0
# a phase's fixed start (loading models, building datasets) and the writing of one scene's files
# (PNGs, the MP4 from an ffmpeg process, the GIF, triplanes): about twice what a fresh-clone demo
# measured on 2 cores (docs/results.md, "The demo in 15 minutes"), since they come after Stage 2,
# where an overrun is the demo's overrun
LOAD_SECONDS = 1.0
FILES_SECONDS = 0.25
MIN_TRAIN_MINUTES = 0.2  # a budget below this for either stage is refused up front
# Stage 1's share of the training time. Stage 2 overfits the demo's token sequences early, and at
# the demo preset's learning rate (2e-3) reaches in 400-500 steps the held-out bits that 1e-3
# reached in 700-970, so an eighth of the time (628-658 steps in three demos on a fast
# 2-core machine) loses it nothing, and Stage 1, short of steps, gets the rest (docs/results.md,
# "Stage 2's learning rate and Stage 1's share"); 0.88 until a token's ids shared a position
# (`stage2.group_ids`), with which Stage 2 reached in two thirds of its minutes the held-out bits
# it had reached in all of them ("Stage 2 over two ids a token"): a tenth now
STAGE1_FRACTION = 0.90
FIXED_SHARE = 0.35  # the fixed phases may take this share of the budget before their counts shrink
# phases whose work shrinks when the budget is short: first the metrics' counts, then the visuals
METRIC_PHASES = ("eval_stage1", "features", "eval_generation", "eval_radius")
VISUAL_PHASES = ("reconstruct", "generate")
# default dataset size: 300 scenes per minute of budget, 4,000 from 13.3 minutes on. At the demo's
# ~10,000 Stage-1 steps on a fast 2-core machine, 4,000 scenes gave +0.12 dB novel view over
# 2,000 (whose 1,800 training images were seen 43 times); at 5,000 steps they were level
# (docs/results.md, "Training scenes"); at 3,600 steps, as slow 2-core machines make, 4,000 were
# still ahead by 0.02-0.07 dB in two seeds, which the ~5% more steps 2,000 leave did not buy back
SCENES_PER_MINUTE = 300
MAX_DEFAULT_SCENES = 4000


@dataclass
class UnitCosts:
    """Seconds per unit of work, measured with the run's model sizes (`probe_costs`)."""

    render_batched: float  # one image rendered inside a batch (evaluation)
    render_single: float  # one image rendered alone (orbit frames, views of one scene)
    encode: float  # one image encoded to tokens, inside a batch
    sample_sequence: float  # one Stage-2 sequence sampled (with the KV cache)
    probe_seconds: float  # what measuring took
    synth_scene: float = 0.0  # one synthetic scene ray-cast (canonical + novel views) and written, at the run's resolution
    sample_batched: float = 0.0  # one Stage-2 sequence sampled inside a batch of EVAL_BATCH (the metrics)
    canonical_read: float = 0.0  # one scene's canonical view and depth read from disk (tokens, evaluation)
    scene_read: float = 0.0  # one scene's views and depth read from disk (the feature net)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class DemoSizes:
    """How much work each fixed phase does."""

    n_scenes: int
    resolution: int
    views: int
    eval_scenes: int
    recon_scenes: int
    generated: int  # samples in all classes
    classes: int  # one `generate` call (models loaded) per class
    frames: int
    mesh_resolution: int
    samples_per_ray: int  # proposal + NeRF samples: a render queries res^2 x this many points
    synth_done: int = 0  # scenes already on disk


@torch.no_grad()
def probe_costs(cfg: Config, device: str = "cpu", batch: int = EVAL_BATCH, num_classes: int = 5,
                views: int = 4) -> UnitCosts:
    """Time a batched render, a single render, an encode, a sampled sequence alone and in a batch of
    an untrained model of `cfg`'s sizes (each the least of PROBE_REPEATS calls, after a warm-up;
    the batch once), and the making and reading back of synthetic scenes of `views` novel views;
    2-3 s for the demo preset on 2 cores."""
    from vq3d.models.sampling import sample
    from vq3d.models.stage1 import Stage1Model
    from vq3d.train.stage2 import build_gpt, ids_per_position

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    model = Stage1Model(cfg).to(device).eval()
    res = cfg.data.resolution
    images = torch.rand(batch, 3, res, res, generator=gen).to(device) * 2 - 1

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def least(fn) -> float:  # one call can catch a slow moment of a shared machine
        return min(timed(fn) for _ in range(PROBE_REPEATS))

    scene = model.decode_codes(model.quantize(images).codes)
    one = model.decode_codes(model.quantize(images[:1]).codes)
    model.render(one, model.canonical_cameras(1, device))  # warm-up
    render_batched = least(lambda: model.render(scene, model.canonical_cameras(batch, device))) / batch
    render_single = least(lambda: model.render(one, model.canonical_cameras(1, device)))
    encode = least(lambda: model.encode(images)) / batch
    token_info = {"seq_len": model.tokens_per_image, "grid": model.grid,
                  "codebook_size": cfg.model.codebook_size, "num_classes": num_classes}
    gpt = build_gpt(cfg, token_info | {"ids_per_token": ids_per_position(cfg, token_info)})
    gpt = gpt.to(device).eval()
    labels = torch.zeros(1, dtype=torch.long, device=device)
    sample_sequence = least(lambda: sample(gpt, 1, labels, generator=torch.Generator(device).manual_seed(0)))
    batch_labels = torch.zeros(EVAL_BATCH, dtype=torch.long, device=device)
    sample_batched = timed(lambda: sample(gpt, EVAL_BATCH, batch_labels,
                                          generator=torch.Generator(device).manual_seed(0))) / EVAL_BATCH
    synth_scene, canonical_read, scene_read = _time_synth_scenes(cfg, views, timed)
    return UnitCosts(render_batched, render_single, encode, sample_sequence, time.perf_counter() - start,
                     synth_scene, sample_batched, canonical_read, scene_read)


def _time_synth_scenes(cfg: Config, views: int, timed) -> tuple[float, float, float]:
    """(seconds to make one synthetic scene, to read back its canonical view, to read back all its
    views): `generate_dataset` (the synth phase's code, writing threads included) continues a
    one-scene dataset by SYNTH_PROBE_SCENES scenes, and the `SyntheticDataset` reads of every
    training scene among them are timed as the token extraction (canonical views) and the feature
    net (every view) read them."""
    import tempfile

    from vq3d.data.synthetic import CameraSettings
    from vq3d.data.synthetic_dataset import SyntheticDataset
    from vq3d.data.synthetic_writer import generate_dataset

    r = cfg.render
    camera = CameraSettings(r.camera_distance, r.fov_deg, r.sampling_radius)
    with tempfile.TemporaryDirectory(prefix="vq3d-synth-probe-") as tmp:
        make = lambda n: generate_dataset(tmp, n, cfg.data.resolution, views, 0, camera,  # noqa: E731
                                          progress=False)
        make(1)  # warm-up
        synth_scene = timed(lambda: make(1 + SYNTH_PROBE_SCENES)) / SYNTH_PROBE_SCENES
        reads = []
        for novel_views in (False, True):
            dataset = SyntheticDataset(tmp, "train", novel_views=novel_views)
            dataset[0]  # warm-up: the image decoder's first call loads its plugins
            reads.append(timed(lambda d=dataset: [d[i] for i in range(len(d))]) / len(dataset))
    return synth_scene, reads[0], reads[1]


def estimate_fixed_seconds(sizes: DemoSizes, costs: UnitCosts) -> dict[str, float]:
    """Estimated seconds of every phase but the training loops, from the work each one does."""
    s, c = sizes, costs
    n_train, n_test = split_counts(s.n_scenes)
    n_eval = min(s.eval_scenes, n_test) if s.eval_scenes else n_test
    n_recon = min(s.recon_scenes, n_test)
    # a scene's views in `render_scene_files`: canonical + 4 rim views + the orbit
    scene_files = (1 + 4 + s.frames) * c.render_single + FILES_SECONDS
    mesh = s.mesh_resolution**3 / (s.resolution**2 * s.samples_per_ray) * c.render_single  # density queries
    return {
        "synth": max(0, s.n_scenes - s.synth_done) * c.synth_scene,
        "eval_stage1": LOAD_SECONDS + n_eval * ((1 + s.views) * c.render_batched + c.encode + c.scene_read),
        "reconstruct": (2 * LOAD_SECONDS + MESH_IMPORT_SECONDS
                        + n_recon * (scene_files + mesh + (1 + s.views) * c.render_single)),
        "tokens": LOAD_SECONDS + n_train * (c.encode + c.canonical_read),
        "generate": s.classes * LOAD_SECONDS + s.generated * (c.sample_sequence + scene_files),
        "report": REPORT_SECONDS,
    }


def default_scene_count(minutes: float) -> int:
    """Synthetic scenes when none are asked for: SCENES_PER_MINUTE per minute of budget,
    MAX_DEFAULT_SCENES at most, 200 at least."""
    return int(min(MAX_DEFAULT_SCENES, max(200, round(minutes * SCENES_PER_MINUTE / 10) * 10)))


def scale_factor(estimates: dict[str, float], available_seconds: float, share: float = FIXED_SHARE,
                 scalable_phases: tuple[str, ...] = METRIC_PHASES + VISUAL_PHASES) -> float:
    """Factor (<= 1) for the counts of `scalable_phases` so that all fixed phases fit in `share`
    of `available_seconds` (0 when even the others alone do not fit)."""
    scalable = sum(v for k, v in estimates.items() if k in scalable_phases)
    others = sum(v for k, v in estimates.items() if k not in scalable_phases)
    room = share * available_seconds - others
    if scalable <= 0 or room >= scalable:
        return 1.0
    return max(0.0, room / scalable)


def scaled(count: int, factor: float, floor: int) -> int:
    """`count` x `factor`, rounded down, but not below `floor` (nor above `count`)."""
    return min(count, max(floor, int(count * factor)))


def split_training(seconds_left: float, fixed_left: float, stage1_fraction: float,
                   reserve_seconds: float) -> tuple[float, float]:
    """(Stage-1, Stage-2) training seconds: what remains after the fixed phases and the reserve,
    `stage1_fraction` of it to Stage 1 and the rest to Stage 2 (each less its set-up overhead)."""
    training = seconds_left - fixed_left - reserve_seconds - 2 * TRAIN_OVERHEAD_SECONDS
    return stage1_fraction * training, (1.0 - stage1_fraction) * training


# slack kept back for estimate errors: 3% (27 s of 15 minutes) until the fresh-clone demos on
# machines I and J had ended 30-55 s before their 15 minutes, the reserve and over-estimates of the
# phases after Stage 2 unused (the feature net's minutes were scaled by the slowdown too, then)
RESERVE_SHARE = 0.02


def reserve_seconds(total_seconds: float) -> float:
    """Slack kept back for estimate errors and process start-up: RESERVE_SHARE of the total, at
    least 10 s."""
    return max(10.0, RESERVE_SHARE * total_seconds)
