"""An endless, resumable stream of training batches for both stages.

Map-style datasets are read in a seeded order that depends only on (seed, step), split
between ranks (`ResumableBatchSampler`), so `--resume` continues with exactly the batches an
uninterrupted run would have seen. Streaming shards (IterableDataset) split by rank and worker
themselves and resume approximately (the shuffle buffer is not checkpointed).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from vq3d.data.loader import collate_items, images_to_float, loader_view
from vq3d.errors import UserError
from vq3d.train.sampler import ResumableBatchSampler


def batch_stream(dataset: Dataset, batch_size: int, *, seed: int, start_step: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, device: torch.device | str = "cpu",
                 bad_files: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Yield batches (dicts of tensors on `device`; images float in [-1, 1]) forever.

    `batch_size` is per rank. Files skipped by the dataset are recorded in `bad_files`.
    """
    device = torch.device(device)
    dataset = loader_view(dataset, uint8=device.type == "cuda")  # report skipped files; uint8 to GPUs
    if isinstance(dataset, IterableDataset):
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_items)
    else:
        n = len(dataset)
        if n == 0:
            raise UserError("the dataset holds no usable images")
        sampler = ResumableBatchSampler(n, batch_size, seed, rank=rank, world_size=world_size,
                                        start_step=start_step, drop_last=n >= batch_size * world_size)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_items,
                            persistent_workers=num_workers > 0)
    while True:
        for batch in loader:
            for key, reason in batch.pop("_skipped", []):
                if bad_files is not None:
                    bad_files[key] = reason
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            batch["image"] = images_to_float(batch["image"])
            yield batch
