"""Typed configuration: one dataclass tree for model, renderer, losses, data and training.

Presets (`tiny`, `demo`, `paper`) build a `Config`; YAML files and `--set section.key=value`
strings override any field. Unknown keys and values of the wrong type raise `ConfigError`
naming the key. A resolved config is written next to every run's outputs (`save_config`).

Paper-preset defaults follow `docs/design.md` (sources: the VQ3D paper, ViT-VQGAN, Mip-NeRF 360).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key."""


@dataclass
class ModelConfig:
    """Stage-1 autoencoder (encoder -> codebook -> triplane decoder)."""

    backbone: Literal["vit", "cnn"] = "vit"  # "cnn" is the paper's "CNN enc, dec" ablation
    representation: Literal["triplane", "implicit"] = "triplane"  # "implicit": "w/o triplanes"
    patch_size: int = 8  # encoder patch size p: tokens form a (res/p) x (res/p) grid
    enc_layers: int = 8  # ViT-S encoder [ViT-VQGAN]
    enc_width: int = 512
    enc_heads: int = 8
    enc_mlp: int = 2048
    dec_layers: int = 32  # ViT-L decoder [paper]
    dec_width: int = 1280
    dec_heads: int = 16
    dec_mlp: int = 5120
    codebook_size: int = 8192  # K codes [ViT-VQGAN]
    codebook_dim: int = 32  # factorized: latents projected to this dim and l2-normalized
    commitment: float = 0.25  # beta on ||z - sg(e)||^2 (the encoder's side)
    dead_code_steps: int = 200  # a code unused this many steps is restarted from a recent latent
    plane_channels: int = 32  # C of each triplane [paper]
    plane_resolution: int = 512  # R of each triplane [paper]
    implicit_hidden: int = 128  # hidden width of the "w/o triplanes" conditioned MLP


@dataclass
class RenderConfig:
    """Cameras, contraction, samplers, fields and compositing (one renderer for every use)."""

    camera_distance: float = 1.5  # canonical camera sits at (0, 0, camera_distance)
    fov_deg: float = 45.0  # vertical and horizontal field of view (square images)
    sampling_radius: float = 0.3  # radius of the tangent disc that novel cameras are drawn from
    near: float = 0.2  # first sample distance along a ray [Mip-NeRF 360]
    far: float = math.inf  # last sample distance; may be infinite (disparity 0)
    proposal_samples: tuple[int, ...] = (64, 64)  # samples of each proposal round
    nerf_samples: int = 32  # samples of the final NeRF round
    mlp_hidden: int = 32  # proposal and NeRF MLP width [paper, EG3D]
    mlp_layers: int = 2
    plane_reduce: Literal["sum", "mean"] = "sum"  # how the three plane features combine
    contraction: Literal["l2", "linf"] = "l2"  # Mip-NeRF 360 uses the L2 norm
    # World points are multiplied by this before the contraction: above 1 the region around the
    # origin (the object, in front of the canonical camera) gets more of the planes' texels and
    # the background fewer. 1 keeps the world's units (paper).
    scene_scale: float = 1.0
    background: Literal["none", "black", "white"] = "none"  # colour behind the last sample
    stratified: bool = True  # jitter samples in training (evaluation always uses fixed spacing)
    proposal_anneal_steps: int = 1000  # Mip-NeRF 360 weight annealing of the proposal histogram
    proposal_anneal_slope: float = 10.0
    proposal_dilation: float = 0.5  # Mip-NeRF 360 dilation multiplier (x expected interval width)
    proposal_dilation_bias: float = 0.0025  # added dilation in s-space (both 0 = off) [Mip-NeRF 360]
    proposal_feature_grad: bool = False  # interlevel loss also trains the planes (Mip-NeRF 360: no)
    recompute: bool = True  # recompute MLP activations (and features, see below) in backward
    feature_cache_mb: float = 256.0  # save sample features for backward if they fit (else recompute)
    checkpoint_chunks: bool = False  # training: render chunk_rays at a time, recompute in backward
    chunk_rays: int = 0  # rays per chunk when rendering in bounded memory (0: from chunk_mb)
    # Memory (MB) that one chunk's temporaries may take in the renderer (points of the lookup +
    # MLP, rays of resampling and of inference renders). 0 = auto: a quarter of the free memory
    # on CUDA (a paper-size training render is then one chunk per level: few, large kernels),
    # 32 MB on CPU (cache-sized chunks; vq3d.render.execution).
    chunk_mb: float = 0.0
    # How the triplanes' gradient is summed: "index_add" (atomic adds: fast on GPU), "segment"
    # (sort by texel, one add per texel: fast on CPU), "auto" (by device).
    scatter: Literal["auto", "segment", "index_add"] = "auto"
    # Rays rendered per image in training steps that need no whole image (no GAN, no perceptual
    # loss yet): a random subset of the canonical pixels, so the encoder and decoder see more
    # images for the same rendering cost. 0 = every pixel.
    train_rays: int = 0


@dataclass
class LossConfig:
    """Weights of Eq. 4 and the knobs of each loss term."""

    mse: float = 1.0
    perceptual: float = 0.1  # LPIPS; off unless lpips weights are configured
    logit_laplace: float = 0.1
    logit_laplace_eps: float = 0.1  # DALL-E's epsilon
    gan: float = 0.1  # main and novel-view discriminators (non-saturating)
    gan_start_steps: int = 0  # no discriminators (nor novel renders) before this step
    gan_warmup_steps: int = 0  # then the GAN weight ramps linearly from 0 over these steps
    # The novel-view discriminator may start earlier than the main one and see smaller renders,
    # so that its signal (the paper's only one on where the scene sits) acts for longer at a cost
    # a CPU run can pay: -1 = with the main GAN; 0 resolution = the training resolution. Before
    # the main GAN the canonical view still renders ray subsets; the novel views and the
    # canonical views they are compared with render whole at novel_gan_resolution.
    novel_gan_start_steps: int = -1
    novel_gan_resolution: int = 0
    vq: float = 1.0
    distortion: float = 0.01  # Mip-NeRF 360
    interlevel: float = 1.0  # Mip-NeRF 360
    depth: float = 1.0  # Eq. 1-2
    scale: float = 0.3  # Eq. 3
    small_scale: float = 1.0  # lambda_smallscale of Eq. 3
    max_scale: float = 1.0  # s* above this is penalized (Eq. 3 uses 1; in disparity units)
    depth_scale_floor: float = 0.0  # clamp s* from below early in training (0 = off; see depth_loss)
    depth_scale_floor_steps: int = 0  # the floor fades linearly to 0 over these steps
    depth_grad_through_st: bool = True  # let gradients flow through s*, t*
    # "relative": Eq. 1-2 against the per-image normalized target (the paper; pseudo-GT depth).
    # "metric": s = 1, t = 0 against the true disparity of synthetic data (vq3d.losses.depth.
    # metric_depth_loss); Eq. 3 is then moot. "auto": metric on synthetic data, else relative.
    depth_target: Literal["auto", "relative", "metric"] = "relative"
    # The look-at prior (vq3d/losses/lookat.py; not in the paper, 0 = off): the canonical view's
    # central pixels rendered at render.camera_distance, the point the novel cameras orbit. It
    # fixes the shift t* of Eq. 1, which the relative loss leaves free.
    lookat: float = 0.0
    lookat_fraction: float = 0.1  # side of the central square, as a fraction of the image's
    # Where the central pixels' mean depth is put, as a fraction of render.camera_distance: 1 is
    # the orbit's centre; a subject's visible front is nearer than its centre (exact geometry
    # of the synthetic training scenes gives 0.90: vq3d.losses.lookat.exact_lookat_depth).
    lookat_depth: float = 1.0
    r1_gamma: float = 10.0  # lazy R1 penalty on real images
    r1_every: int = 16
    lpips_vgg_path: str = ""  # local VGG16 weights (safetensors or torchvision .pth state dict)
    lpips_lin_path: str = ""  # local LPIPS linear-layer weights


@dataclass
class DataConfig:
    """Where images come from and how they are prepared."""

    path: str = ""  # dataset folder, file list or shard pattern
    kind: Literal["auto", "synthetic", "folder", "flat", "filelist", "webdataset"] = "auto"
    resolution: int = 256  # training resolution (square)
    depth_cache: str = ""  # pseudo-GT disparity cache (not needed for synthetic data)
    skip_missing_depth: bool = False  # train on images whose cached depth is missing (else error)
    hflip: bool = False  # random horizontal flips
    num_workers: int = 2
    # Synthetic data: keep decoded items in memory when the split fits in this many MB (per
    # loader worker; 0 = decode every read). Other datasets are always read from disk.
    cache_mb: float = 1024.0
    shuffle_buffer: int = 1000  # WebDataset shuffle buffer
    depth_in_shards: bool = False  # WebDataset: read disparity from KEY.disp.png members
    verify_images: bool = True  # header-check every file when the dataset is built
    max_image_pixels: int = 89_478_485  # larger images are skipped (decompression bombs)


@dataclass
class TrainConfig:
    """Stage-1 optimisation and run control."""

    batch_size: int = 256
    # Images per step once the GAN is on (whole-image renders of canonical and novel views cost
    # more than ray subsets, see render.train_rays): the first gan_batch_size of each batch are
    # used. 0 = batch_size.
    gan_batch_size: int = 0
    lr: float = 1e-4
    disc_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-4
    warmup_steps: int = 5000
    steps: int = 500_000
    min_lr_ratio: float = 0.1  # cosine decay ends at this fraction of lr
    max_minutes: float = 0.0  # stop (and checkpoint) after this long; 0 = no limit
    # With max_minutes: after the first steps, scale `steps` and `loss.gan_start_steps` by one
    # factor measured on this machine so the whole schedule (cosine decay, GAN phase) ends within
    # the time (a fresh run only; the fitted values are saved in the run's config.yaml).
    fit_to_time: bool = False
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 = no EMA weights
    ckpt_every: int = 1000
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (0 = all)
    log_every: int = 50
    image_every: int = 1000
    seed: int = 0
    # bf16 autocast on the step's device (CPU or CUDA; slow on CPUs without bf16 matmul units);
    # the precision policy keeps geometry fp32 (vq3d/precision.py, docs/design.md)
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False  # torch.compile of the ViT encoder and decoder (vq3d/train/compile.py)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    max_bad_steps: int = 20  # this many non-finite losses in a row stop the run


@dataclass
class Stage2Config:
    """Stage-2 GPT over Stage-1 tokens and its training."""

    layers: int = 24  # VIM-Base-like decoder-only GPT [ViT-VQGAN]
    width: int = 1536
    heads: int = 16
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * width (VIM-Base: 6144 = 4 * 1536)
    dropout: float = 0.0
    class_dropout: float = 0.1  # class replaced by the null class this often (for guidance)
    batch_size: int = 256
    lr: float = 4.5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01
    warmup_steps: int = 5000
    steps: int = 450_000
    val_fraction: float = 0.02


@dataclass
class SampleConfig:
    """Stage-2 sampling."""

    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    guidance: float = 1.0  # classifier-free guidance scale (1 = off)
    batch_size: int = 32  # images sampled per batch (doubled inside when guidance != 1)
    seed: int = 0  # sampling seed (a torch.Generator; the global RNG is untouched)
    use_kv_cache: bool = True  # False recomputes the whole prefix every step (slow; for checks)


@dataclass
class Config:
    preset: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    sample: SampleConfig = field(default_factory=SampleConfig)


# ----------------------------------------------------------------------------- presets


def paper() -> Config:
    """The paper's sizes (GPU): 256x256, ViT-S encoder, ViT-L decoder, 512x512x32 triplanes."""
    return Config(preset="paper")


def demo() -> Config:
    """CPU-minutes sizes for the synthetic benchmark (see README for the choice)."""
    cfg = Config(preset="demo")
    cfg.data.resolution = 32
    # 4,096 codes: 64 tokens of 12 bits instead of 8 cost nothing per step and gave +0.5 dB PSNR
    # at 1,500 steps (16,384: +0.1 more; 32-d codes: worse; README, "Presets"). 64x64 planes
    # raised PSNR by 0.4 dB in 20 minutes but not novel-view PSNR, and worsened depth accuracy.
    cfg.model = ModelConfig(
        patch_size=4, enc_layers=3, enc_width=128, enc_heads=4, enc_mlp=256,
        dec_layers=3, dec_width=128, dec_heads=4, dec_mlp=256,
        codebook_size=4096, codebook_dim=16, dead_code_steps=50,
        plane_channels=16, plane_resolution=32, implicit_hidden=64,
    )
    cfg.render.proposal_samples = (24,)
    cfg.render.nerf_samples = 16
    cfg.render.near = 0.5
    cfg.render.mlp_hidden = 32
    cfg.render.proposal_anneal_steps = 200
    # The object near the origin covers ~6 of 32 texels at scale 1. 20-minute runs, PSNR / novel-
    # view PSNR: scale 1 25.06 / 23.49, 2 25.44 / 23.64, 3 25.63 / 23.79 dB; 6,000-step screens
    # peaked at 3 (4 and 6 were worse; README, "Presets").
    cfg.render.scene_scale = 3.0
    # Geometry must form within minutes (see README, "Presets"): with the relative loss, s* is
    # floored while the weights are still spread along the rays and Eq. 3's threshold sits at the
    # synthetic scenes' true disparity scale (1.5-2.3); the GAN comes only for the last part.
    # Weight 1 with the metric loss (20-minute runs): PSNR 23.8 dB against 23.4 at 5 and 0.5.
    cfg.loss.depth = 1.0
    cfg.loss.depth_scale_floor = 1.5
    cfg.loss.depth_scale_floor_steps = 600
    cfg.loss.max_scale = 2.5
    # The paper's relative depth loss (Eq. 1-3), on estimator-like pseudo-GT when the demo runs
    # (data.depth_cache; vq3d depth --estimator-like), with the look-at prior, a departure from
    # the paper: Eq. 1's shift is free and stayed near 0, rendering the walls at infinity and
    # the object at 2.2x its distance (6,000 steps: novel views 19.4 dB against 22.5 for copying
    # the input); with the prior 22.8 dB and the object at 1.09x (docs/results.md). The metric
    # loss against true disparity (loss.depth_target=metric) is an upper bound only synthetic
    # data allows: 22.9 dB at the same steps.
    cfg.loss.depth_target = "relative"
    cfg.loss.lookat = 0.1
    cfg.loss.gan_start_steps = 8740
    cfg.loss.gan_warmup_steps = 100
    # The renderer is the cost of a step: before the GAN each image renders 256 of its 1,024 rays
    # (measured: +0.5 dB PSNR in the same 20 minutes against whole images). Batch 8: for the same
    # images seen, 4x the steps of batch 32 gave +0.75 dB PSNR (README, "Presets"). A GAN step
    # renders 4 whole images twice (canonical, novel) for ~3 pre-GAN steps; the GAN gets the last
    # 5% of the steps (1/6 of the time; at GAN batch 8 it took 28% and moved PSNR < 0.05 dB).
    cfg.render.train_rays = 256
    # 9,200 steps are the schedule's shape; with --max-minutes the run fits it to the time
    # (train.fit_to_time). The loader runs in the training process: on 2 cores, loader workers
    # only compete with it (18.2 against 17.2 steps per second).
    cfg.data.num_workers = 0
    cfg.train = TrainConfig(
        batch_size=8, gan_batch_size=4, lr=1e-3, disc_lr=2e-4, warmup_steps=100, steps=9200,
        ckpt_every=2000, log_every=25, image_every=2000, weight_decay=0.0, fit_to_time=True,
    )
    # Measured on 7,200 training sequences of 64 tokens (README, "Stage 2"): 3,000 steps give
    # 3.49 validation bits per token against 3.73 after 1,000, and samples of the requested class
    # 0.48 of the time against 0.39. Without dropout a small dataset overfits.
    cfg.stage2 = Stage2Config(
        layers=4, width=128, heads=4, dropout=0.1, batch_size=32, lr=1e-3,
        warmup_steps=100, steps=3000, val_fraction=0.1,
    )
    # Classifier-free guidance raises that share: 0.51 without, 0.67 at 2, 0.71 at 3 on a 20-minute
    # Stage 1 whose reconstructions keep their class 0.68 of the time (README, "Presets").
    cfg.sample.guidance = 3.0
    return cfg


def tiny() -> Config:
    """Seconds-sized models for tests."""
    cfg = Config(preset="tiny")
    cfg.data.resolution = 16
    cfg.data.num_workers = 0
    cfg.model = ModelConfig(
        patch_size=4, enc_layers=1, enc_width=32, enc_heads=2, enc_mlp=64,
        dec_layers=1, dec_width=32, dec_heads=2, dec_mlp=64,
        codebook_size=32, codebook_dim=8, dead_code_steps=10,
        plane_channels=8, plane_resolution=8, implicit_hidden=16,
    )
    cfg.render.proposal_samples = (8,)
    cfg.render.nerf_samples = 8
    cfg.render.near = 0.5
    cfg.render.mlp_hidden = 16
    cfg.render.proposal_anneal_steps = 10
    cfg.render.chunk_rays = 1024
    cfg.train = TrainConfig(
        batch_size=4, lr=1e-3, disc_lr=1e-3, warmup_steps=2, steps=20, ckpt_every=10,
        log_every=1, image_every=10, weight_decay=0.0,
    )
    cfg.stage2 = Stage2Config(
        layers=1, width=32, heads=2, batch_size=8, lr=3e-3, warmup_steps=2, steps=20,
        val_fraction=0.25,
    )
    return cfg


PRESETS = {"tiny": tiny, "demo": demo, "paper": paper}


# ----------------------------------------------------------------------------- overrides


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check/convert `value` to the annotated type `tp`, raising ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (Union, types.UnionType):
        for option in args:
            if option is type(None) and value is None:
                return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value] if not isinstance(value, str) else value
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "infinity"):
            return math.inf
        if isinstance(value, str):  # YAML 1.1 reads "2e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _set(obj: Any, path: list[str], value: Any, full_key: str) -> None:
    name = path[0]
    names = [f.name for f in dataclasses.fields(obj)]
    if name not in names:
        prefix = full_key[: len(full_key) - len(".".join(path))] or ""
        raise ConfigError(
            f"unknown config key '{full_key}': '{name}' is not one of "
            f"{', '.join(prefix + n for n in names)}"
        )
    hints = typing.get_type_hints(type(obj))
    current = getattr(obj, name)
    if dataclasses.is_dataclass(current):
        if len(path) == 1:
            if not isinstance(value, dict):
                raise ConfigError(f"{full_key}: expected a mapping of fields, got {value!r}")
            for k, v in value.items():
                _set(current, [str(k)], v, f"{full_key}.{k}")
            return
        _set(current, path[1:], value, full_key)
        return
    if len(path) > 1:
        raise ConfigError(f"unknown config key '{full_key}': '{name}' has no sub-keys")
    setattr(obj, name, _coerce(full_key, value, hints[name]))


def apply_dict(cfg: Config, values: dict[str, Any]) -> Config:
    """Override `cfg` in place from a nested mapping (as read from YAML); returns `cfg`."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config file must hold a mapping, got {type(values).__name__}")
    for key, value in values.items():
        if key == "preset":
            continue
        _set(cfg, str(key).split("."), value, str(key))
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.key=value` strings; values are parsed as YAML scalars or lists."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"{key}: cannot parse value {raw!r}: {err}") from None
        _set(cfg, key.split("."), value, key)
    return cfg


def load_config(
    preset: str | None = None, files: list[str | Path] = (), overrides: list[str] = ()
) -> Config:
    """Build a config: preset (default: the one a file names, else `paper`), files, overrides."""
    file_values = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        file_values.append(values)
    if preset is None:
        named = [v.get("preset") for v in file_values if isinstance(v, dict) and "preset" in v]
        preset = named[-1] if named else "paper"
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset]()
    for values in file_values:
        apply_dict(cfg, values)
    apply_overrides(cfg, list(overrides))
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists, inf stays a float) for YAML/JSON."""
    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [convert(x) for x in v]
        return v

    return convert(cfg)


# Fields that earlier versions wrote into run configs and that are gone; none of them changed
# what a run did, so reading an old run's config drops them.
RETIRED_FIELDS: tuple[tuple[str, str], ...] = (("render", "train_render_size"),)


def from_dict(values: dict[str, Any]) -> Config:
    """Inverse of `to_dict` (a run's saved config). A field the dict lacks (one added after the
    run was written) keeps its dataclass default, which leaves a newer feature off, so an older
    run resumes as it was trained rather than with its preset's current values."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for section, name in RETIRED_FIELDS:
        if isinstance(values.get(section), dict):
            values[section].pop(name, None)
    preset = values.get("preset", "paper")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    return apply_dict(Config(preset=preset), values)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from vq3d.utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
