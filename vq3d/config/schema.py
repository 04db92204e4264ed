"""The configuration schema: one dataclass tree for model, renderer, losses, data, training,
Stage 2 and sampling, with every field's meaning and source beside it.

The defaults are the paper's values (the `paper` preset; docs/paper.md, docs/design.md). Presets
are in `vq3d.config.presets`, YAML files and `--set` overrides in `vq3d.config.io`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

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
    # How the decoder's gradient crosses the quantizer to the encoder (vq3d/models/quantizer.py):
    # the paper's straight-through copy, or the rotation trick (Fifty et al. 2024), a departure
    vq_gradient: Literal["straight_through", "rotation"] = "straight_through"
    # Ids per token (vq3d/models/quantizer.py): each token's latent cut into this many parts, each
    # matched to its own block of codebook_dim / codebook_groups columns (product quantization), so a
    # token carries codebook_groups x log2(codebook_size) bits and Stage 2 models that many ids a token;
    # the paper's is 1, a departure above it
    codebook_groups: int = 1
    dead_code_steps: int = 200  # a code unused this many steps is restarted from a recent latent
    plane_channels: int = 32  # C of each triplane [paper]
    plane_resolution: int = 512  # R of each triplane [paper]
    implicit_hidden: int = 128  # hidden width of the "w/o triplanes" conditioned MLP
    # Which texels each token's head writes (vq3d/models/decoder.py, `TriplaneDecoder`): "raster"
    # puts token (i, j)'s patch at (row i, column j) of every plane, as a plain reshape does (the
    # XY plane then upside down against the image: its rows count +y, the image's -y); "aligned"
    # puts it on the XY texels behind its image patch and on the YZ and ZX bands of the same y and
    # x. The paper does not say; "raster" is what earlier runs used.
    plane_layout: Literal["raster", "aligned"] = "raster"


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
    # Which implementation renders each sampling level: "torch" (the reference), "triton" (one
    # fused kernel per level forward and one backward that recomputes: vq3d/render/fused.py), or
    # "auto" (triton on CUDA when Triton imports, torch elsewhere). The default is torch so that a run
    # saved before the field existed renders as it was trained; the presets set auto.
    kernel: Literal["auto", "torch", "triton"] = "torch"
    # Stage-1 training compiles the torch path's lookup + MLP chunks and proposal resampling of
    # its renders with torch.compile (fused loops instead of one pass over memory per operation;
    # the triplanes' gradient is still summed eagerly). Pays on CPU in runs of minutes: ~25 s of
    # compiling (docs/results.md, "Compiling the field on the CPU"); every other use (evaluation,
    # refinement, the viewer) renders eagerly. Off: eager, as in the paper's code.
    compile_field: bool = False
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
    max_scale: float = 1.0  # s* above this is penalized (Eq. 3 uses 1; in loss.scale_unit)
    # clamp s* from below (0 = off; vq3d.losses.depth.depth_loss): at most max_scale, in its units
    depth_scale_floor: float = 0.0
    depth_scale_floor_steps: int = 0  # the floor fades linearly to 0 over these steps (0 = whole run)
    depth_grad_through_st: bool = True  # let gradients flow through s*, t*
    # "relative": Eq. 1-2 against the per-image normalized target (the paper; pseudo-GT depth).
    # "canonical": G3DR's: the normalized target mapped into depths camera_distance x (1 +- canonical_band),
    # then s = 1, t = 0 (vq3d.losses.depth_target.canonical_target).
    # "metric": s = 1, t = 0 against the true disparity of synthetic data (vq3d.losses.depth.
    # metric_depth_loss); Eq. 3 is then moot. "auto": metric on synthetic data, else relative.
    depth_target: Literal["auto", "relative", "metric", "canonical"] = "relative"
    canonical_band: float = 0.2  # G3DR: depths 4..6 for cameras at distance 5
    # Where the target is an estimator's (relative, canonical): compare inverse depth along the
    # camera axis, 1 / z, what monocular estimators predict ("camera_axis"), or 1 / t along the
    # ray ("ray", what vq3d did before: up to 14% off at a 45-degree view's corners). The paper
    # does not say; DPT's output is 1 / z. (Defaults here are the older behaviour, so a run saved
    # before a field existed loads as it was trained; the presets set the new values.)
    depth_convention: Literal["camera_axis", "ray"] = "ray"
    # The relative target's per-image normalization: "robust" maps the 2nd and 98th percentiles to
    # 0 and 1, "minmax" the extremes (two pixels then set the units of s* and of Eq. 3).
    target_normalization: Literal["robust", "minmax"] = "minmax"
    # The units of the rendered disparity in Eq. 1-3 (so of s*, max_scale and the floor):
    # "lookat": camera_distance / z, 1 at the orbit's centre, so Eq. 3's 1 reads "no flatter than
    # infinity to the look-at point"; "world": 1 / world units (before).
    scale_unit: Literal["lookat", "world"] = "world"
    # The look-at prior (vq3d/losses/lookat.py; not in the paper, 0 = off): the canonical view's
    # central pixels rendered at render.camera_distance, the point the novel cameras orbit. It
    # fixes the shift t* of Eq. 1, which the relative loss leaves free.
    lookat: float = 0.0
    lookat_fraction: float = 0.1  # side of the central square, as a fraction of the image's
    # Where the central pixels are put, as a fraction of render.camera_distance: 1 is the orbit's
    # centre, the camera model's subject (exact geometry of the synthetic training scenes gives
    # 0.90: vq3d.losses.lookat.exact_lookat_depth, a value no photo has).
    lookat_depth: float = 1.0
    # "fixed": every image's central pixels at lookat_depth x camera_distance; "subject": each
    # image's own target, the front of a ball centred at the orbit's centre as wide as the subject
    # looks in its depth target (vq3d.losses.lookat.subject_lookat_target; lookat_depth must be 1),
    # and no nearer than the orbit's centre where the centre sees through a hole in the subject
    lookat_placement: Literal["fixed", "subject"] = "fixed"
    # what is put there: "disparity", the central pixels' mean camera-axis disparity (robust to
    # the far tail of a ray's weights), or "depth", their mean expected ray depth (before)
    lookat_statistic: Literal["disparity", "depth"] = "depth"
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
    # the renderer's field MLPs (proposal and NeRF) learn at lr x this (1 = the paper: one rate
    # for the whole autoencoder; docs/results.md, "The field MLPs' learning rate")
    field_lr_scale: float = 1.0
    # ... reached linearly from 1 over this many steps (0 = from the first step); a part of the
    # schedule's shape, scaled with it like the warm-up (vq3d.train.planner.SCHEDULE_SHAPE)
    field_lr_ramp_steps: int = 0
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
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...; under torchrun "cuda" is cuda:LOCAL_RANK
    # and "cuda:N" puts every rank on that one GPU (vq3d/train/distributed.py)
    # torchrun's process-group backend: auto = nccl with a GPU per rank, gloo on the CPU or when
    # the ranks share one GPU (NCCL refuses that)
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
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
    # With several ids a token (model.codebook_groups > 1): "sequence" gives every id its own stream
    # position (h*w*G); "position" gives a token one and reads its later ids off small depth steps
    # (vq3d/models/gpt.py), so the transformer runs over h*w positions (the demo's). With one id a
    # token, the paper's, the two are the same model. A config saved before the key reads "sequence",
    # what its run was trained with.
    group_ids: Literal["position", "sequence"] = "sequence"


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
