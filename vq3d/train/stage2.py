"""Stage-2 training: `vq3d train stage2` — a GPT over Stage-1 tokens (paper Sec. 3.2, "Stage 2").

Shares the trainer core with Stage 1 (checkpoints, resume, run control, logging, DDP, bf16).
Reports validation loss and bits per token, beside the unigram entropy of the training tokens
(what a model that ignores context would reach).
"""

from __future__ import annotations

import json
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vq3d.config import Config, save_config
from vq3d.data.tokens import check_same_codebook, load_tokens, mirror_pairs
from vq3d.errors import UserError
from vq3d.models.gpt import GPT
from vq3d.train.batches import batch_stream
from vq3d.train.checkpoint import latest_checkpoint, load_checkpoint
from vq3d.train.core import TrainerCore
from vq3d.train.distributed import broadcast_object, cleanup, reduce_metrics
from vq3d.train.planner import FIT_PROBE, FitClock, stage2_steps_to_minutes
from vq3d.train.run_control import RunControl
from vq3d.train.schedule import lr_at, set_lr
from vq3d.train.runs import is_run_folder, prepare_run, read_run_config
from vq3d.utils.io import atomic_write_json


class TokenDataset(Dataset):
    """Rows of a token folder: {"image": ids (T,) long, "label": int} (key "image" so the shared
    batch stream can carry it)."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> None:
        self.ids, self.labels, self.rows = ids, labels, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        r = int(self.rows[i])
        return {"image": torch.from_numpy(np.asarray(self.ids[r], dtype=np.int64)), "label": int(self.labels[r])}


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random split of row indices into (train, validation); validation gets >= 1 row."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction))) if n > 1 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def unigram_entropy_bits(ids: np.ndarray, vocab: int) -> float:
    """Entropy (bits per token) of the empirical token distribution."""
    counts = np.bincount(np.asarray(ids).ravel(), minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def ids_per_position(cfg: Config, info: dict) -> int:
    """Ids that share a stream position under `stage2.group_ids`, for a token folder's info: a
    token's ids ("position") or one ("sequence")."""
    if cfg.stage2.group_ids == "sequence":
        return 1
    return info["seq_len"] // info["grid"] ** 2


def build_gpt(cfg: Config, info: dict) -> GPT:
    """The GPT of a run: info is a token folder's or a run's stage2.json (ids_per_token: 1 if missing,
    what runs made before the key were)."""
    return GPT(info["codebook_size"], info["seq_len"], info["num_classes"], cfg.stage2,
               info.get("ids_per_token", 1))


def _check_resume_keeps_layout(run_dir: Path, info: dict, resumed: Config) -> None:
    """UserError when a run resumed from its checkpoints would give a token another number of
    stream positions than they hold (`stage2.group_ids`); `prepare_run` asks before writing."""
    meta = run_dir / "stage2.json"
    if not meta.is_file():
        return
    trained = json.loads(meta.read_text()).get("ids_per_token", 1)
    asked = ids_per_position(resumed, info)
    if asked != trained:
        raise UserError(f"{run_dir} was trained with {trained} id(s) a stream position, and this resume "
                        f"asks for {asked}: keep its stage2.group_ids")


@torch.no_grad()
def validation_loss(model: GPT, ids: np.ndarray, labels: np.ndarray, rows: np.ndarray, device,
                    batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over the validation rows, with their real classes."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start: start + batch_size]
        x = torch.from_numpy(np.asarray(ids[chunk], dtype=np.int64)).to(device)
        y = torch.from_numpy(labels[chunk]).to(device) if model.conditional else None
        _, loss = model(x, y, targets=x)
        total += float(loss) * x.numel()
        count += x.numel()
    model.train(was)
    return total / max(1, count)


def stage2_step(forward, model: GPT, opt: torch.optim.Optimizer, batch: dict, lr: float, cfg: Config,
                autocast, rc: RunControl, step: int) -> dict[str, float]:
    """One GPT update on a batch of token rows (next-token cross-entropy); {} when run control
    rejected a non-finite loss (the update is skipped)."""
    x = batch["image"]
    y = batch["label"] if model.conditional else None
    set_lr(opt, lr)
    with autocast:
        _, loss = forward(x, y, targets=x)
    opt.zero_grad(set_to_none=True)
    if not rc.record_loss(loss, step):
        return {}
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or math.inf)
    opt.step()
    value = float(loss.detach())
    return {"loss": value, "bits_per_token": value / math.log(2), "lr": lr, "grad_norm": float(grad_norm)}


def _write_run_info(run_dir: Path, tokens_dir: str | Path, info: dict, ids: np.ndarray, train_rows: np.ndarray,
                    val_rows: np.ndarray) -> None:
    atomic_write_json(run_dir / "stage2.json", {
        "tokens": str(Path(tokens_dir).resolve()), **{k: info[k] for k in (
            "stage1_run", "stage1_checkpoint", "codebook_hash", "codebook_size", "seq_len", "num_classes",
            "class_names", "ids_per_token")},
        "unigram_entropy_bits": unigram_entropy_bits(ids[train_rows], info["codebook_size"]),
        "train_rows": len(train_rows), "val_rows": len(val_rows)})


def _apply_fit(cfg: Config, steps: int, step_seconds: float, rc: RunControl, run_dir: Path,
               is_main: bool) -> None:
    """Set Stage 2's fitted step count, say so when it changes, and save it for a resume."""
    if steps == cfg.stage2.steps:
        return
    if is_main:
        rc.write(f"fitted to {cfg.train.max_minutes:g} minutes at {step_seconds:.3f} s per step: {steps} "
                 f"steps (was {cfg.stage2.steps})")
    cfg.stage2.steps = steps
    rc.set_total_steps(steps)
    if is_main:
        save_config(cfg, run_dir / "config.yaml")


def train_stage2(cfg: Config, tokens_dir: str | Path, run_dir: str | Path, resume: bool = False,
                 overrides: list[str] = (), stage1_run: str | Path | None = None) -> dict:
    """Train (or resume) a GPT on a token folder; returns the last logged scalars."""
    ids, labels, info = load_tokens(tokens_dir)
    if stage1_run is not None:
        check_same_codebook(stage1_run, info["codebook_hash"], f"the token folder {tokens_dir}")
    if info["num_classes"] and (labels.min() < 0 or labels.max() >= info["num_classes"]):
        raise UserError(f"labels in {tokens_dir} fall outside [0, {info['num_classes']})")
    cfg, start = prepare_run(run_dir, cfg, resume, overrides,
                             check_resumed=partial(_check_resume_keeps_layout, Path(run_dir), info))
    info["ids_per_token"] = ids_per_position(cfg, info)
    run_dir = Path(run_dir)
    s2 = cfg.stage2
    core = TrainerCore(cfg, run_dir, start)  # device, DDP, autocast, checkpoints, run control
    device, dist_info = core.device, core.info
    try:
        model = build_gpt(cfg, info).to(device)
        opt = torch.optim.AdamW(model.param_groups(s2.weight_decay), lr=s2.lr, betas=s2.betas)
        # a mirrored image stays on its source image's side, so validation never sees a mirror of training
        sources = len(ids) // 2 if info.get("mirrored") else len(ids)
        split = split_rows(sources, s2.val_fraction, cfg.train.seed)
        train_rows, val_rows = (mirror_pairs(rows, info) for rows in split)
        if core.is_main:
            _write_run_info(run_dir, tokens_dir, info, ids, train_rows, val_rows)
        modules, optimizers = {"gpt": model}, {"opt": opt}
        core.restore(modules, optimizers)
        forward = core.wrap(model)
        if cfg.train.compile and device.type == "cuda":
            forward = torch.compile(forward)
        per_rank = max(1, s2.batch_size // dist_info.world_size)
        stream = batch_stream(TokenDataset(ids, labels, train_rows), per_rank, seed=cfg.train.seed,
                              start_step=start, rank=dist_info.rank, world_size=dist_info.world_size,
                              device=device)
        step, last = start, {}
        eval_every = max(1, cfg.train.ckpt_every)

        def validate() -> None:
            val = validation_loss(model, ids, labels, val_rows, device)
            last.update(val_loss=val, val_bits_per_token=val / math.log(2))

        # train.fit_to_time with --max-minutes: the steps (at most the configured ones) are fitted
        # to the minutes from this run's own step times, so the cosine decay ends in time; a run
        # resumed after the probe keeps the plan its config.yaml saved
        fitting = cfg.train.fit_to_time and cfg.train.max_minutes > 0 and step < FIT_PROBE[0]
        clock, most_steps = (FitClock(FIT_PROBE) if fitting else None), s2.steps
        with core.logger() as logger, core.run_control(s2.steps, "stage2") as rc:
            while not rc.should_stop(step):
                lr = lr_at(step, s2.lr, s2.warmup_steps, s2.steps, cfg.train.min_lr_ratio)
                last.update(stage2_step(forward, model, opt, next(stream), lr, cfg, core.autocast, rc, step))
                step += 1
                refit = clock.tick(step, time.monotonic(), False) if clock is not None else None
                if refit is not None:
                    planned = stage2_steps_to_minutes(cfg, most_steps, step, refit[0],
                                                      time.monotonic() - rc.start_time)
                    _apply_fit(cfg, broadcast_object(planned), refit[0], rc, run_dir, core.is_main)
                rc.update(step, {"loss": last.get("loss", float("nan"))})
                if step % cfg.train.log_every == 0 or step == 1:
                    logger.log_scalars(step, reduce_metrics({k: last[k] for k in last if not k.startswith("val_")}))
                if step % eval_every == 0 or rc.should_stop(step):
                    validate()
                    logger.log_scalars(step, {k: last[k] for k in ("val_loss", "val_bits_per_token")})
                    core.save(step, modules, optimizers)
            if "val_loss" not in last or step % eval_every:
                validate()
            core.save(step, modules, optimizers)
            last["stop_reason"] = rc.stop_reason
        last["unigram_entropy_bits"] = unigram_entropy_bits(ids[train_rows], info["codebook_size"])
        return last
    finally:
        cleanup()


def load_stage2(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[GPT, Config, dict]:
    """A trained GPT (eval mode), its config and its stage2.json from a Stage-2 run folder, an
    exported folder (`vq3d export-run`) or a hub id in the local cache."""
    if not is_run_folder(run_dir):
        from vq3d.models.hub import hub_folder

        model = GPT.from_pretrained(hub_folder(run_dir))  # a folder, or the cache: UserError if neither
        return model.to(device).eval(), model.hub_cfg, model.hub_meta
    meta_path = Path(run_dir) / "stage2.json"
    if not meta_path.is_file():
        raise UserError(f"{run_dir} is not a Stage-2 run (no stage2.json): pass the --out of `vq3d train stage2`")
    meta = json.loads(meta_path.read_text())
    cfg = read_run_config(run_dir)
    if latest_checkpoint(run_dir) is None:
        raise UserError(f"{run_dir} has no checkpoint yet")
    model = build_gpt(cfg, meta)
    load_checkpoint(run_dir, {"gpt": model}, restore_rng=False)
    return model.to(device).eval(), cfg, meta
