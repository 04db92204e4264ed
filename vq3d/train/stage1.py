"""Stage-1 training: `vq3d train stage1` (paper Sec. 3.2, Eq. 4).

Each step: encode -> quantize -> decode triplanes -> render the canonical view and one novel
view per image (uniform in the tangent disc) -> generator update on Eq. 4 -> discriminator
update (main: real vs reconstruction; novel-view: detached reconstruction + depth vs novel
view + depth; lazy R1). Works on one CPU/GPU or several GPUs under torchrun (DDP for the
autoencoder; the discriminators' gradients are all-reduced by hand, which keeps R1's double
backward out of DDP).

A step never waits on the host (docs/design.md, "Execution"): its randomness is drawn on the
device, a non-finite update is skipped on the device by one flag all ranks agree on
(`StepGuard`), and its scalars stay device tensors until a log step reads them all at once.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor, nn

from vq3d.config import Config, ConfigError, save_config
from vq3d.config.validate import validate
from vq3d.data.loader import build_dataset, detect_kind, write_dataset_info
from vq3d.errors import UserError
from vq3d.losses.depth_target import metric_depth_target
from vq3d.losses.lookat import central_pixels
from vq3d.losses.perceptual import build_perceptual
from vq3d.losses.reconstruction import LogitLaplaceLoss
from vq3d.losses.stage1 import discriminator_losses, generator_losses, novel_gan_start
from vq3d.models.discriminator import Discriminator
from vq3d.models.quantizer import CodebookUsage
from vq3d.models.stage1 import Stage1Model
from vq3d.render.cameras import axis_cosines, sample_novel_cameras
from vq3d.train.batches import batch_stream
from vq3d.train.compile import compile_regions
from vq3d.train.core import TrainerCore
from vq3d.train.distributed import (
    all_reduce_grads,
    broadcast_object,
    broadcast_parameters,
    cleanup,
    reduce_metrics,
)
from vq3d.train.ema import EMA
from vq3d.train.logger import RunLogger
from vq3d.train.panels import stage1_panel
from vq3d.train.run_control import RunControl
from vq3d.train.runs import prepare_run
from vq3d.train.planner import FIT_PROBE, FitClock, apply_plan, plan_to_minutes
from vq3d.train.schedule import lr_at, ramp_scale, set_lr
from vq3d.train.step_guard import StepGuard, fused_adamw, keep_fused
from vq3d.utils.io import atomic_write_json



def _data_kind(cfg: Config) -> str | None:
    try:
        return cfg.data.kind if cfg.data.kind != "auto" else detect_kind(cfg.data.path)
    except UserError:
        if cfg.loss.depth_target == "metric" and not cfg.data.depth_cache:
            raise
        return None


def uses_metric_depth(cfg: Config) -> bool:
    """Whether this run's data gets the metric depth loss (`vq3d.losses.depth_target`)."""
    return metric_depth_target(cfg.loss, _data_kind(cfg), cfg.data.depth_cache, cfg.data.path)


def truth_target_factor(cfg: Config, metric_depth: bool) -> Tensor | None:
    """(1, 1, R, R) factor turning synthetic data's true ray disparity 1 / t (its target when no
    depth cache is set) into camera-axis disparity 1 / z = 1 / (t cos) for a relative or canonical
    depth loss in that convention; None where the target is already right (a cache of estimator
    maps, the metric loss, the ray convention)."""
    if (metric_depth or cfg.data.depth_cache or cfg.loss.depth_convention != "camera_axis"
            or _data_kind(cfg) != "synthetic"):
        return None
    res = cfg.data.resolution
    return (1.0 / axis_cosines(cfg.render.fov_deg, res, res))[None, None]


class Stage1Trainer:
    """Holds the models, optimizers and state of one Stage-1 run."""

    def __init__(self, cfg: Config, run_dir: str | Path, start_step: int = 0) -> None:
        self.cfg, self.run_dir, self.step = cfg, Path(run_dir), start_step
        self._fitted = False  # whether train.fit_to_time has planned this session's steps yet
        self.core = TrainerCore(cfg, run_dir, start_step)  # device, DDP, autocast, checkpoints
        self.info, self.device, self.autocast = self.core.info, self.core.device, self.core.autocast
        t, L = cfg.train, cfg.loss
        if not 0 <= t.gan_batch_size <= t.batch_size:
            raise ConfigError(f"train.gan_batch_size {t.gan_batch_size} must be between 0 (= batch_size) "
                              f"and train.batch_size ({t.batch_size})")
        if cfg.render.train_rays < 0:
            raise ConfigError(f"render.train_rays {cfg.render.train_rays} must be >= 0 (0 = every pixel)")
        validate(cfg)  # a config built in code, not through load_config, is checked here
        self.metric_depth = uses_metric_depth(cfg)
        factor = truth_target_factor(cfg, self.metric_depth)
        self.truth_factor = factor.to(self.device) if factor is not None else None
        self.model = Stage1Model(cfg).to(self.device)
        res = cfg.data.resolution
        self.use_gan = L.gan > 0
        self.d_main = Discriminator(res, 3).to(self.device) if self.use_gan else None
        self.novel_res = L.novel_gan_resolution or res  # the novel views' side (the discriminator's input)
        self.d_novel = Discriminator(self.novel_res, 4).to(self.device) if self.use_gan else None
        self.logit_laplace = LogitLaplaceLoss(L.logit_laplace_eps).to(self.device)
        self.perceptual = build_perceptual(L)
        if self.perceptual is not None:
            self.perceptual = self.perceptual.to(self.device)
        self._freeze_unused()  # frozen parameters stay in the optimizer (no gradient: no update),
        # so checkpoints keep one layout whatever the configuration
        self.opt_g = fused_adamw(self._generator_groups(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
        self.d_params = ([] if not self.use_gan else
                         list(self.d_main.parameters()) + list(self.d_novel.parameters()))
        self.opt_d = (fused_adamw(self.d_params, lr=t.disc_lr, betas=t.betas, weight_decay=0.0)
                      if self.use_gan else None)
        self.ema = EMA(self.model, t.ema_decay) if t.ema_decay > 0 else None
        self.usage = CodebookUsage(cfg.model.codebook_size)
        state = self.core.restore(self._modules(), self._optimizers())
        if state:
            for opt in self._optimizers().values():
                keep_fused(opt)
        self.guard = StepGuard(self.device, t.max_bad_steps, int(state.get("skipped", 0)),
                               int(state.get("last_finite_step", start_step - 1)))
        # DDP syncs the autoencoder; the discriminators and the logit-Laplace scale live outside
        # it (R1's double backward), so rank 0's values are copied to every rank here and their
        # gradients are averaged by hand.
        self.outside_ddp = [m for m in (self.d_main, self.d_novel, self.logit_laplace) if m is not None]
        broadcast_parameters(self.outside_ddp)
        self.forward = self.core.wrap(self.model)
        if t.compile:
            compile_regions(self.model)
        self.model.renderer.compile_field = cfg.render.compile_field  # training renders only

    def _freeze_unused(self) -> None:
        """Parameters that cannot get a gradient in this configuration are frozen, so that DDP
        (which waits for a gradient of every trainable parameter) runs every ablation: the
        proposal MLP learns only from the interlevel loss (Mip-NeRF 360), so without it it
        keeps its initial weights."""
        proposal = self.model.renderer.proposal_mlp
        if proposal is not None and not self.cfg.loss.interlevel:
            proposal.requires_grad_(False)

    def _generator_groups(self) -> list[dict]:
        """The autoencoder's parameter groups: one (the paper's single rate), or with
        `train.field_lr_scale` != 1 the field MLPs in a second group at that multiple of the rate
        (`set_lr` reads `lr_scale`). One group, in the order saved runs have, by default."""
        params = list(self.model.parameters()) + list(self.logit_laplace.parameters())
        scale = self.cfg.train.field_lr_scale
        if scale == 1.0:
            return [{"params": params}]
        field = {id(p) for p in self.model.renderer.parameters()}
        return [{"params": [p for p in params if id(p) not in field]},
                {"params": [p for p in params if id(p) in field], "lr_scale": scale}]

    def _modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"model": self.model, "logit_laplace": self.logit_laplace}
        if self.use_gan:
            mods.update(d_main=self.d_main, d_novel=self.d_novel)
        if self.ema is not None:
            mods["ema"] = self.ema.shadow
        return mods

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"g": self.opt_g, **({"d": self.opt_d} if self.opt_d is not None else {})}

    def save(self) -> None:
        counters = self.guard.state()  # a host read, once per checkpoint
        self.core.save(self.step, self._modules(), self._optimizers(), state=counters)

    def _ray_subset(self, images: Tensor, gan_active: bool, gen: torch.Generator) -> Tensor | None:
        """(B, render.train_rays) random raster indices per image, or None for whole images
        (when the option is off, covers the image, or a GAN or perceptual loss needs the image)."""
        rays, (B, _, H, W) = self.cfg.render.train_rays, images.shape
        needs_image = gan_active or (self.perceptual is not None and self.cfg.loss.perceptual)
        if rays <= 0 or rays >= H * W or needs_image:
            return None
        # the `rays` largest of uniform noise: distinct pixels, uniformly drawn from the step's
        # generator on the device (topk, not a full argsort: 4x cheaper at 256 images of 256x256)
        noise = torch.rand(B, H * W, generator=gen, device=gen.device)
        if self.cfg.loss.lookat:  # the look-at prior reads the central pixels: always render them
            noise.index_fill_(1, central_pixels(H, W, self.cfg.loss.lookat_fraction, noise.device), 2.0)
        return noise.topk(rays, dim=1).indices

    def train_step(self, batch: dict) -> dict[str, Tensor | float]:
        """One generator and one discriminator update. Returns the step's scalars as 0-d device
        tensors (and Python floats): nothing is read on the host here (see `read_scalars`). A
        non-finite update is skipped on the device ("skipped" is 1 then)."""
        cfg, step = self.cfg, self.step
        images = batch["image"]
        disparity = batch.get("disparity")
        if disparity is None and (cfg.loss.depth or cfg.loss.scale):
            raise RuntimeError("the batch has no disparity target but the depth loss is on")
        if disparity is not None and self.truth_factor is not None:
            disparity = disparity * self.truth_factor
        lr = lr_at(step, cfg.train.lr, cfg.train.warmup_steps, cfg.train.steps, cfg.train.min_lr_ratio)
        if len(self.opt_g.param_groups) > 1:  # the field MLPs' group (train.field_lr_scale)
            self.opt_g.param_groups[1]["lr_scale"] = ramp_scale(step, cfg.train.field_lr_scale,
                                                                cfg.train.field_lr_ramp_steps)
        set_lr(self.opt_g, lr)
        # the step's randomness (jitter, ray subsets, novel cameras, code restarts), on its device
        gen = torch.Generator(device=self.device).manual_seed(
            cfg.train.seed * 1_000_003 + step * 97 + self.info.rank)
        # Novel views feed only the novel-view discriminator, so they are rendered (and the
        # discriminators trained) only once it has started (`loss.novel_gan_start_steps`; by
        # default with the main GAN, which needs whole canonical images).
        gan_active = self.use_gan and step >= cfg.loss.gan_start_steps
        novel_active = self.use_gan and step >= novel_gan_start(cfg.loss)
        if gan_active and cfg.train.gan_batch_size > 0:
            keep = max(1, cfg.train.gan_batch_size // self.info.world_size)
            images = images[:keep]
            disparity = disparity[:keep] if disparity is not None else None
        out, logs = self._generator_step(images, disparity, gan_active, novel_active, gen)
        logs["lr"] = lr
        logs.update(self._codebook_step(out["quant"], gen, logs["skipped"]))
        if novel_active or gan_active:
            logs.update(self._discriminator_step(images, out, gan_active, logs["skipped"]))
        if (step + 1) % cfg.train.image_every == 0:  # the next step logs a panel of this one
            self._last = (images, out)
        return logs

    def _generator_step(self, images: Tensor, disparity: Tensor | None, gan_active: bool, novel_active: bool,
                        gen: torch.Generator) -> tuple[dict, dict[str, Tensor]]:
        """Forward, Eq. 4 and the autoencoder's update (skipped on the device if non-finite)."""
        cfg, r = self.cfg, self.cfg.render
        novel_c2w = None
        if novel_active:
            novel_c2w = sample_novel_cameras(images.shape[0], r.camera_distance, r.fov_deg, r.sampling_radius,
                                             gen).c2w
        pixels = self._ray_subset(images, gan_active, gen)
        for p in self.d_params:
            p.requires_grad_(False)
        with self.autocast:
            out = self.forward(images, novel_c2w, self.step, gen, pixels, self.novel_res)
            total, terms = generator_losses(
                images, disparity, out["quant"], out["canonical"], out["novel"], cfg.loss, r,
                self.logit_laplace, self.perceptual, self.d_main if gan_active else None,
                self.d_novel if out["novel"] else None, self.step, pixels, metric_depth=self.metric_depth)
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        all_reduce_grads(list(self.logit_laplace.parameters()))
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for g in self.opt_g.param_groups for p in g["params"]], cfg.train.grad_clip or float("inf"),
            foreach=True)
        bad = self.guard.flag(total, grad_norm)
        self.guard.step(self.opt_g, bad)
        self.guard.record(bad, self.step)
        if self.ema is not None:
            self.ema.update(self.model, self.step, skip=bad)
        logs = {k: v.detach() for k, v in terms.items()}
        logs.update(loss=total.detach(), grad_norm=grad_norm, perplexity=out["quant"].perplexity, skipped=bad)
        return out, logs

    def _codebook_step(self, quant, gen: torch.Generator, bad: Tensor) -> dict[str, Tensor]:
        """Usage window and dead-code restarts; a skipped step adds no ids (-1 marks an empty
        slot) and restarts no codes (its latents may be nan)."""
        self.usage.update(torch.where(bad > 0, -1, quant.ids))
        restarted = self.model.quantizer.restart_dead_codes(quant.latents, gen, allowed=bad == 0)
        return {"codes_restarted": restarted}

    def _discriminator_step(self, images: Tensor, out: dict, gan_active: bool, g_bad: Tensor) -> dict[str, Tensor]:
        """Both discriminators' update (with lazy R1), skipped on the device if non-finite or if
        the generator's update was (its renders are what the discriminators learn from)."""
        cfg = self.cfg
        for p in self.d_params:
            p.requires_grad_(True)
        set_lr(self.opt_d, lr_at(self.step, cfg.train.disc_lr, cfg.train.warmup_steps, cfg.train.steps,
                                 cfg.train.min_lr_ratio))
        apply_r1 = cfg.loss.r1_every > 0 and self.step % cfg.loss.r1_every == 0
        with self.autocast:
            d_total, d_terms = discriminator_losses(
                images, out["canonical"] if gan_active else None, out["novel"], self.d_main if gan_active else None,
                self.d_novel, cfg.loss, cfg.render, apply_r1, novel_real=out["novel_real"])
        self.opt_d.zero_grad(set_to_none=True)
        d_total.backward()
        all_reduce_grads(self.d_params)  # every rank, every GAN step: no rank waits alone
        d_bad = torch.maximum(self.guard.flag(d_total), g_bad)
        self.guard.step(self.opt_d, d_bad)
        logs = {k: v.detach() for k, v in d_terms.items()}
        logs["d_skipped"] = d_bad
        return logs

    def _fit_to_time(self, rc: RunControl, step_seconds: float, in_gan: bool = False) -> None:
        """Refit train.steps to the time left and scale the schedule's shape with it
        (`vq3d.train.planner`; `train.fit_to_time`): `step_seconds` is the measured mean of the
        current phase's steps."""
        cfg = self.cfg
        planned = plan_to_minutes(cfg, self.step, step_seconds, time.monotonic() - rc.start_time, in_gan)
        steps, gan_start = broadcast_object(planned)  # every rank keeps rank 0's plan
        first = not self._fitted
        changed = abs(steps - cfg.train.steps) > 0.01 * cfg.train.steps
        if self.info.is_main and (first or changed):
            rc.write(f"{'fitted' if first else 'refitted'} to {cfg.train.max_minutes:g} minutes at "
                     f"{step_seconds:.3f} s per {'GAN ' if in_gan else ''}step: {steps} steps "
                     f"(was {cfg.train.steps}), GAN from step {gan_start} (was {cfg.loss.gan_start_steps})")
        self._fitted = True
        apply_plan(cfg, steps, gan_start, in_gan)
        rc.set_total_steps(steps)
        if self.info.is_main:
            save_config(cfg, self.run_dir / "config.yaml")  # a resumed run continues this plan

    def train(self) -> dict[str, float]:
        """Run until the step/time bound or a signal; checkpoint on the way out."""
        cfg, info = self.cfg, self.info
        need_depth = bool(cfg.loss.depth or cfg.loss.scale)
        dataset = build_dataset(cfg.data, "train", seed=cfg.train.seed, rank=info.rank,
                                world_size=info.world_size, require_depth=need_depth, novel_views=False)
        if info.is_main:
            write_dataset_info(dataset, self.run_dir)
        per_rank = max(1, cfg.train.batch_size // info.world_size)
        bad: dict[str, str] = {}
        stream = batch_stream(dataset, per_rank, seed=cfg.train.seed, start_step=self.step, rank=info.rank,
                              world_size=info.world_size, num_workers=cfg.data.num_workers,
                              device=self.device, bad_files=bad)
        last: dict[str, float] = {}
        logs: dict[str, Tensor | float] = {}
        self.model.train()
        with self.core.logger() as logger, \
                self.core.run_control(cfg.train.steps, "stage1", sync_every=min(10, cfg.train.log_every)) as rc:
            if info.is_main and self.metric_depth and self.step == 0:
                rc.write("depth loss: metric (Eq. 2 at s = 1, t = 0 against the synthetic scenes' true "
                         "disparity; loss.depth_target=relative for the paper's Eq. 1-3)")
            if info.is_main and self.model.renderer.compile_field:
                rc.write("compiling the renderer's field for this machine (render.compile_field): the "
                         "first steps wait for it, ~25 s on 2 CPU cores with an empty inductor cache")
            t0 = time.monotonic()
            # a run that stopped before the probe fits again; one that passed it saved its fitted plan
            fitting = cfg.train.fit_to_time and cfg.train.max_minutes > 0 and self.step < FIT_PROBE[0]
            clock = FitClock(FIT_PROBE) if fitting else None
            while not rc.should_stop(self.step):
                batch = next(stream)
                logs = self.train_step(batch)
                self.step += 1
                if clock is not None:
                    gan = self.use_gan and self.step - 1 >= cfg.loss.gan_start_steps
                    refit = clock.tick(self.step, time.monotonic(), gan)
                    if refit is not None:
                        self._fit_to_time(rc, *refit)
                if self.step % cfg.train.log_every == 0 or self.step == 1:
                    last = self._log(logger, rc, logs, t0)
                else:
                    rc.update(self.step)
                if info.is_main and self.step % cfg.train.image_every == 0 and hasattr(self, "_last"):
                    logger.log_image(self.step, "panel", stage1_panel(self.model, *self._last, cfg))
                if self.step % cfg.train.ckpt_every == 0:
                    self.save()
            self.save()
            if logs and self.step % cfg.train.log_every != 0:  # the last step's values, unlogged
                last = reduce_metrics(read_scalars(logs))
            if info.is_main:
                _write_bad_files(self.run_dir, dataset, bad)
                last["stop_reason"] = rc.stop_reason  # type: ignore[assignment]
        return last

    def _log(self, logger: RunLogger, rc: RunControl, logs: dict, t0: float) -> dict[str, float]:
        """Read the step's scalars on the host (the step's one sync), check for divergence, show
        and write them."""
        values = read_scalars(logs)
        skipped = rc.skipped_steps = self.guard.check()  # the bar shows skipped steps beside the losses
        rc.update(self.step, {k: values[k] for k in ("loss", "mse", "depth") if k in values})
        values = reduce_metrics(values)
        values.update(codebook_usage=self.usage.fraction_used(), skipped_steps=skipped,
                      steps_per_sec=(self.step - rc.start_step) / max(1e-9, time.monotonic() - t0))
        logger.log_scalars(self.step, values)
        return values


def read_scalars(logs: dict[str, Tensor | float]) -> dict[str, float]:
    """A step's scalars as Python floats: every tensor read in one host transfer."""
    keys = [k for k, v in logs.items() if isinstance(v, Tensor)]
    values = torch.stack([logs[k].float() for k in keys]).tolist() if keys else []
    out = {k: float(v) for k, v in logs.items() if not isinstance(v, Tensor)}
    out.update(zip(keys, values))
    return out


def _write_bad_files(run_dir: Path, dataset, bad: dict[str, str]) -> None:
    """Record every file skipped while building the dataset or while training."""
    merged = dict(getattr(dataset, "bad_files", {}))
    merged.update(bad)
    atomic_write_json(run_dir / "bad_files.json", dict(sorted(merged.items())))


def train_stage1(cfg: Config, run_dir: str | Path, resume: bool = False, overrides: list[str] = ()) -> dict:
    """Train (or resume) a Stage-1 run in `run_dir`; returns the last logged scalars."""
    cfg, start = prepare_run(run_dir, cfg, resume, overrides)
    trainer = Stage1Trainer(cfg, run_dir, start)
    try:
        return trainer.train()
    finally:
        cleanup()
