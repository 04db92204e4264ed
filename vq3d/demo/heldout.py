"""Held-out synthetic scenes against their ground truth: the demo page's reconstruction rows.

For each held-out scene (the dataset's "test" split), FOLDER/gt_compare/ receives:
  input.png, reconstruction.png           the input and the model's canonical render
  depth_model.png, depth_gt.png           disparity, each min-max normalized per image, one colour map
  novel_K_model.png, novel_K_gt.png       renders at the dataset's K-th novel camera and the true view
  compare.json                            PSNR of every render vs its ground truth, and the
                                          copy-the-input baseline (the input scored against each view)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vq3d.eval.metrics import psnr
from vq3d.render.cameras import Cameras
from vq3d.train.runs import load_stage1
from vq3d.utils.images import colorize, save_png, to_unit
from vq3d.utils.io import atomic_write_json


@torch.no_grad()
def compare_with_ground_truth(stage1_run: str | Path, data_root: str | Path, folders: dict[int, Path],
                              device: str = "cpu") -> list[dict[str, Any]]:
    """Write the files above for each test-split position i -> folder in `folders`; returns the records."""
    from vq3d.data.synthetic_dataset import SyntheticDataset

    model, cfg = load_stage1(stage1_run, device)
    dataset = SyntheticDataset(data_root, split="test")
    records = []
    for position, folder in folders.items():
        item = dataset[position]
        out = Path(folder) / "gt_compare"
        image = item["image"][None].to(device)  # (1, 3, H, W)
        scene = model.decode_codes(model.quantize(image).codes)
        canon = model.render(scene, model.canonical_cameras(1, device))
        save_png(out / "input.png", to_unit(image[0]))
        save_png(out / "reconstruction.png", to_unit(canon.rgb[0]))
        save_png(out / "depth_model.png", colorize(canon.disparity[:1])[0])
        save_png(out / "depth_gt.png", colorize(item["disparity"][None])[0])
        record: dict[str, Any] = {"scene": item["index"], "class_name": dataset.class_names[item["label"]],
                                  "folder": Path(folder).name,
                                  "psnr": float(psnr(canon.rgb, image)), "novel_psnr": [], "copy_psnr": []}
        for k in range(item["novel_images"].shape[0]):
            truth = item["novel_images"][k][None].to(device)
            view = model.render(scene, Cameras(item["novel_c2w"][k][None].to(device), cfg.render.fov_deg))
            save_png(out / f"novel_{k}_model.png", to_unit(view.rgb[0]))
            save_png(out / f"novel_{k}_gt.png", to_unit(truth[0]))
            record["novel_psnr"].append(float(psnr(view.rgb, truth)))
            record["copy_psnr"].append(float(psnr(image, truth)))
        atomic_write_json(out / "compare.json", record)
        records.append(record)
    return records
