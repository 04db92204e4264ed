"""Which depth loss a run's data gets (`loss.depth_target`): the paper's relative Eq. 1-3, or the
metric variant (Eq. 2 at s = 1, t = 0) that only synthetic data's true disparity allows.

    "relative": Eq. 1-3 against per-image normalized pseudo-GT (the paper; every photo);
    "metric":   s = 1, t = 0 against true disparity; an upper bound, synthetic data only;
    "auto":     metric on synthetic data without a depth cache, else relative.
"""

from __future__ import annotations

from vq3d.config import ConfigError, LossConfig


def metric_depth_target(loss: LossConfig, data_kind: str | None, depth_cache: str, data_path: str = "") -> bool:
    """Whether the depth loss is the metric one. data_kind: "synthetic", "folder", "webdataset",
    ... or None when the data cannot be told yet (building the dataset will say what is wrong).
    Raises ConfigError when "metric" is asked of data without true depth."""
    mode = loss.depth_target
    if mode == "relative" or not (loss.depth or loss.scale):
        return False
    if depth_cache:  # pseudo-GT from a cache (photos, or estimator-like synthetic maps)
        if mode == "metric":
            raise ConfigError("loss.depth_target=metric needs true depth, but data.depth_cache gives "
                              f"relative pseudo-GT ({depth_cache}): use relative or auto")
        return False
    if data_kind == "synthetic":
        return True
    if mode == "metric":
        raise ConfigError(f"loss.depth_target=metric needs true depth, which only synthetic data has "
                          f"({data_path} is {data_kind or 'unreadable'} data, whose pseudo-GT depth is "
                          "relative): use loss.depth_target=relative or auto")
    return False
