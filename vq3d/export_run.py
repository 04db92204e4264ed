"""`vq3d export-run RUN --out DIR`: a training run as a hub-style model folder (vq3d.models.hub):
the weights as safetensors (Stage 1: the EMA weights when kept), the resolved config, the class
index and a model card with the preset, data, steps, held-out metrics (`--eval-data`) and the
commands. Every command that takes `--stage1 RUN` (or `--stage2 RUN`) takes such a folder too,
or a hub id in the local cache; `Stage1Model.from_pretrained(DIR)` / `GPT.from_pretrained(DIR)`
load it in Python.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from vq3d.data.tokens import codebook_fingerprint
from vq3d.errors import UserError
from vq3d.train.checkpoint import latest_checkpoint
from vq3d.train.logger import read_metrics
from vq3d.train.runs import is_run_folder, load_stage1

STAGE1_METRICS = ("psnr", "novel_view_psnr", "copy_baseline_psnr", "depth_accuracy", "novel_depth_accuracy",
                  "object_depth_ratio", "codebook_usage")


def export_run(run: str | Path, out: str | Path, eval_data: str | Path | None = None, max_scenes: int = 200,
               device: str = "cpu") -> Path:
    """Write the export of `run` to `out` (atomically: a folder beside it, then renamed); returns `out`."""
    run, out = Path(run), Path(out)
    if not is_run_folder(run) or latest_checkpoint(run) is None:
        raise UserError(f"{run} is not a trained vq3d run (no config.yaml or no checkpoint): pass the --out "
                        "of `vq3d train stage1` or `vq3d train stage2`")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty: choose a new --out")
    steps = int(json.loads((latest_checkpoint(run) / "state.json").read_text())["step"])
    if (run / "stage2.json").is_file():
        model, card = _stage2(run, steps, device)
    else:
        model, card = _stage1(run, steps, eval_data, max_scenes, device)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, model_card_kwargs=card)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out


def _stage1(run: Path, steps: int, eval_data, max_scenes: int, device: str) -> tuple[Any, dict[str, Any]]:
    model, cfg = load_stage1(run, device)
    index = run / "class_index.json"
    class_names = list(json.loads(index.read_text())) if index.is_file() else []
    info = run / "dataset_info.json"
    depth = json.loads(info.read_text()).get("depth_targets") if info.is_file() else None
    model.hub_meta = {"class_names": class_names, "codebook_hash": codebook_fingerprint(model), "steps": steps,
                      "source_run": str(run.resolve()), "logit_laplace_log_scale": _logit_laplace_log_scale(run, cfg)}
    metrics, note = [], "No held-out metrics: export with `--eval-data SYNTHETIC_DATA` to score them."
    if eval_data:
        from vq3d.eval.stage1 import evaluate_stage1

        scores = evaluate_stage1(run, eval_data, max_scenes=max_scenes, device=device)
        model.hub_meta["heldout_metrics"] = {k: scores[k] for k in STAGE1_METRICS if k in scores}
        metrics = [(k, f"{v:.4g}") for k, v in model.hub_meta["heldout_metrics"].items()]
        note = (f"Held-out metrics: `vq3d eval stage1 --run RUN --data {eval_data} --max-scenes {max_scenes}` "
                f"({scores['scenes']} scenes); depth accuracy is lower-is-better.")
    card = {"data": f"`{cfg.data.path}`" + (f", depth targets: {depth}" if depth else ""), "steps": f"{steps:,}",
            "metrics": metrics, "metrics_note": note,
            "training_commands": (f"vq3d train stage1 --preset {cfg.preset} --data {cfg.data.path} --out RUN "
                                  f"--steps {steps}   # the exact settings: config.json"),
            "commands": ("vq3d reconstruct --stage1 DIR_OR_HUB_ID photo.jpg --out recon/\n"
                         "vq3d view --stage1 DIR_OR_HUB_ID")}
    return model, card


def _logit_laplace_log_scale(run: Path, cfg) -> list[float] | None:
    """The run's learned logit-Laplace log-scale per channel (refining an export uses it), or None."""
    from vq3d.losses.reconstruction import LogitLaplaceLoss
    from vq3d.train.checkpoint import load_checkpoint

    ckpt = latest_checkpoint(run)
    if not (ckpt / "logit_laplace.safetensors").is_file():
        return None
    loss = LogitLaplaceLoss(cfg.loss.logit_laplace_eps)
    load_checkpoint(ckpt, {"logit_laplace": loss}, restore_rng=False)
    return [float(v) for v in loss.log_scale.detach()]


def _stage2(run: Path, steps: int, device: str) -> tuple[Any, dict[str, Any]]:
    from vq3d.train.stage2 import load_stage2

    model, cfg, meta = load_stage2(run, device)
    model.hub_cfg = cfg
    keep = ("codebook_size", "seq_len", "ids_per_token", "num_classes", "class_names", "codebook_hash",
            "unigram_entropy_bits")
    model.hub_meta = {k: meta[k] for k in keep if k in meta} | {"steps": steps, "source_run": str(run.resolve())}
    val = [r for r in read_metrics(run) if "val_bits_per_token" in r]
    metrics = [("validation bits per token", f"{val[-1]['val_bits_per_token']:.4g}")] if val else []
    metrics += [("unigram entropy (bits)", f"{meta['unigram_entropy_bits']:.4g}")] if "unigram_entropy_bits" in meta else []
    card = {"data": f"tokens `{meta.get('tokens', 'not recorded')}`", "steps": f"{steps:,}", "metrics": metrics,
            "metrics_note": "Validation on the run's held-out token rows.",
            "training_commands": f"vq3d train stage2 --stage1 STAGE1 --tokens TOKENS --out RUN --steps {steps}",
            "commands": "vq3d generate --stage1 STAGE1 --stage2 DIR_OR_HUB_ID --out samples/"}
    return model, card
