"""What each metric key of `vq3d eval stage1` / `vq3d eval generation` means, for the demo page.

One job: a key -> its human name, a one-line meaning, which direction is better, the keys of its
baselines or reference, and its group. Keys the evaluators build from parts (`s1_fid_novel`,
`s2_kid_std`, `copy_baseline_ssim`) are read by pattern. A key this module does not know still
gets a description (its raw key as the name, "no description"), so the page never drops a number.
"""

from __future__ import annotations

from dataclasses import dataclass

NO_DESCRIPTION = "no description"

# group -> title on the page; "stage1" is eval/stage1.json, "s1"/"s2" the prefixes of eval/generation.json
GROUP_TITLES = {
    "stage1": "Stage 1 on held-out scenes",
    "s1": "Stage 1 reconstructions",
    "s2": "Stage 2 samples",
    "stage2": "Stage 2 token model",
    "run": "About the evaluation",
    "other": "Other",
}
# what a name is prefixed with where groups are mixed (the "not measured" list)
_GROUP_PREFIX = {"s1": "Stage 1", "s2": "Stage 2", "stage2": "Stage 2"}


@dataclass(frozen=True)
class MetricInfo:
    key: str
    name: str
    meaning: str
    better: str | None = None  # "higher", "lower", "near 1"; None: a count or setting, not a score
    group: str = "other"
    copy_key: str | None = None  # the copy-the-input baseline of the same measure
    warp_key: str | None = None  # the true-geometry warp baseline of the same measure
    reference_key: str | None = None  # a value to read it against (Stage 1's for a Stage-2 metric)
    known: bool = True

    @property
    def label(self) -> str:
        """The name, prefixed by its stage where names of both stages share one list."""
        prefix = _GROUP_PREFIX.get(self.group)
        return f"{prefix}: {self.name}" if prefix and self.known else self.name


# --------------------------------------------------------------------- eval/stage1.json (vq3d.eval.stage1)

# image measures scored at the novel views, and by each baseline: suffix -> (name, better)
_IMAGE_MEASURES = {"psnr": ("PSNR (dB)", "higher"), "ssim": ("SSIM", "higher"), "lpips": ("LPIPS", "lower")}

# key -> (name, meaning, better), in the order the page lists them
_STAGE1 = {
    "novel_view_psnr": ("Novel-view PSNR (dB)", "renders at the dataset's novel cameras against their "
                        "ground-truth images", "higher"),
    "novel_view_ssim": ("Novel-view SSIM", "structural similarity of the novel-view renders to their "
                        "ground truth", "higher"),
    "novel_view_lpips": ("Novel-view LPIPS", "perceptual distance of the novel-view renders to their "
                         "ground truth", "lower"),
    "psnr": ("Reconstruction PSNR, canonical view (dB)", "the render at the input camera against the "
             "input image", "higher"),
    "ssim": ("Reconstruction SSIM, canonical view", "structural similarity of the render at the input "
             "camera to the input image", "higher"),
    "lpips": ("Reconstruction LPIPS, canonical view", "perceptual distance of the render at the input "
              "camera to the input image", "lower"),
    "depth_accuracy": ("Depth accuracy, canonical view (paper's metric)", "MSE of rendered against "
                       "true depth, each normalized to zero mean and unit variance per image", "lower"),
    "novel_depth_accuracy": ("Depth accuracy, novel views", "the same depth MSE at the novel cameras",
                             "lower"),
    # no direction: the truth's own s* depends on the scene and on the units (loss.scale_unit)
    "disparity_scale": ("Disparity scale s* (Eq. 1)", "the scale fitting the rendered disparity to the "
                        "per-image normalized true disparity, in the run's disparity units", None),
    "object_depth_ratio": ("Object depth ratio", "median over scenes of rendered / true depth over the "
                           "object's pixels: 1 is the true distance", "near 1"),
    "background_depth_ratio": ("Background depth ratio", "median over scenes of rendered / true depth "
                               "over the room's pixels: 1 is the true distance", "near 1"),
    "codebook_usage": ("Codebook usage (fraction of codes)", "share of the codebook's codes the "
                       "evaluated scenes use", "higher"),
}
STAGE1_ORDER = list(_STAGE1)


def _stage1(key: str) -> MetricInfo | None:
    if key in _STAGE1:
        name, meaning, better = _STAGE1[key]
        measure = key.removeprefix("novel_view_") if key.startswith("novel_view_") else None
        copy_key = f"copy_baseline_{measure}" if measure else None
        warp_key = f"warp_baseline_{measure}" if measure else None
        return MetricInfo(key, name, meaning, better, "stage1", copy_key, warp_key)
    for kind, title, meaning in (
            ("copy", "Copy-the-input", "the input image itself scored against each novel view: what a "
             "model without 3D gets"),
            ("warp", "True-geometry warp", "the input warped to each novel view by the true depth: exact "
             "geometry, with nothing filled in where the input does not see")):
        measure = key.removeprefix(f"{kind}_baseline_")
        if key.startswith(f"{kind}_baseline_") and measure in _IMAGE_MEASURES:
            name, better = _IMAGE_MEASURES[measure]
            return MetricInfo(key, f"{title} {name}", meaning, better, "stage1")
    if key == "scenes":
        return MetricInfo(key, "Held-out scenes", "scenes evaluated, never seen in training", None, "run")
    return None


# --------------------------------------------------------------- eval/generation.json (vq3d.eval.generation)

_VIEWS = {  # suffix of the FID / FD names -> (name, where the images were rendered)
    "_canonical": ("canonical view", "rendered at the input camera"),
    "_novel": ("novel view", "rendered at one random camera in the novel-view disc"),
    "": ("novel view", "rendered at one random camera in the novel-view disc, as the paper samples views"),
}
_DISTRIBUTION = {  # base -> (name, meaning, better)
    "fid": ("FID", "Frechet Inception distance to the real images' statistics (paper's Tables 1, 3)",
            "lower"),
    "fd_domain": ("FD, domain features", "Frechet distance to the real images in the features of a "
                  "classifier trained on this dataset (--features)", "lower"),
}
# base (after the s1_/s2_ prefix) -> (name, meaning, better); a (s1, s2) pair where they differ
_GENERATION = {
    "is": ("Inception score", "how confidently and diversely Inception classifies the novel views", "higher"),
    "kid": ("KID", "kernel Inception distance of the novel views to the real images", "lower"),
    "class_accuracy": (
        ("Class kept by reconstructions", "share of reconstructions the domain net labels with their "
         "image's class: the ceiling for the samples' class accuracy", "higher"),
        ("Class accuracy", "share of samples the domain net labels with the class they were asked for",
         "higher")),
    "non_flatness": ("Non-flatness (3DGP)", "exp of the entropy of the canonical depth histogram: 1 for a "
                     "flat billboard, more for real relief", "higher"),
    "depth_accuracy_depth_model": ("Depth accuracy vs depth model", "depth MSE of the canonical render "
                                   "against the depth model's disparity of the rendered image", "lower"),
    "disparity_scale_depth_model": (
        ("Disparity scale s* vs depth model", "s* (Eq. 1) of the canonical render against the depth "
         "model's disparity of the input image (the training target)", None),
        ("Disparity scale s* vs depth model", "s* (Eq. 1) of the canonical render against the depth "
         "model's disparity of the rendered sample", None)),
    "depth_accuracy_gt": ("Depth accuracy vs ground truth", "depth MSE of the canonical render against the "
                          "true depth (synthetic data)", "lower"),
    "disparity_scale_gt": ("Disparity scale s* vs ground truth", "s* (Eq. 1) of the canonical render "
                           "against the true disparity (synthetic data)", None),
    "images": ("Images reconstructed", "real images of the split encoded and rendered", None),
    "samples": ("Samples drawn", "scenes sampled from Stage 2 (classes in equal numbers)", None),
}
_RUN = {
    "real_images": ("Real images in the reference statistics", "the real side of every FID, FD and KID"),
    "radius": ("Novel-view disc radius", "novel cameras are drawn in a disc of this radius"),
    "seconds": ("Evaluation time (s)", "wall-clock time of `vq3d eval generation`"),
}
# Stage 2 view suffix -> the Stage 1 view it is read against (a sample's novel view: a reconstruction's)
_S1_SUFFIX = {"": "_novel", "_canonical": "_canonical"}


def _distribution(stage: str, rest: str) -> MetricInfo | None:
    """`fid{suffix}` / `fd_domain{suffix}` (vq3d.eval.common.distribution_metrics)."""
    for base, (name, meaning, better) in _DISTRIBUTION.items():
        suffix = rest.removeprefix(base)
        if not rest.startswith(base) or suffix not in _VIEWS or (suffix == "" and stage == "s1"):
            continue
        view, where = _VIEWS[suffix]
        reference = f"s1_{base}{_S1_SUFFIX[suffix]}" if stage == "s2" and suffix in _S1_SUFFIX else None
        return MetricInfo(f"{stage}_{rest}", f"{name}, {view}", f"{meaning}; {where}", better, stage,
                          reference_key=reference)
    return None


def _generation(key: str) -> MetricInfo | None:
    if key in _RUN:
        return MetricInfo(key, *_RUN[key], None, "run")
    stage, _, rest = key.partition("_")
    if stage not in ("s1", "s2") or not rest:
        return None
    info = _distribution(stage, rest)
    if info is not None:
        return info
    if rest.endswith("_std") and rest.removesuffix("_std") in ("is", "kid"):
        name = _GENERATION[rest.removesuffix("_std")][0]
        return MetricInfo(key, f"{name}, spread", f"standard deviation of the {name} over its splits",
                          None, stage)
    entry = _GENERATION.get(rest)
    if entry is None:
        return None
    name, meaning, better = entry[stage == "s2"] if isinstance(entry[0], tuple) else entry
    # a Stage-2 score beside the same score of Stage 1's reconstructions: what its decoder can reach
    reference = f"s1_{rest}" if stage == "s2" and better is not None and rest not in ("is", "kid") else None
    return MetricInfo(key, name, meaning, better, stage, reference_key=reference)


# --------------------------------------------------------------------- Stage 2 training (stage2/ logs)

_STAGE2 = {
    "val_bits_per_token": MetricInfo("val_bits_per_token", "Validation bits per token", "bits to code a "
                                     "held-out token sequence with the Stage-2 model", "lower", "stage2",
                                     reference_key="unigram_entropy_bits"),
    "unigram_entropy_bits": MetricInfo("unigram_entropy_bits", "Unigram entropy (bits per token)",
                                       "bits per token of a model that ignores context", "lower", "stage2"),
}


def describe(key: str) -> MetricInfo:
    """What `key` is; an unknown key keeps its raw name and says "no description"."""
    info = _stage1(key) or _generation(key) or _STAGE2.get(key)
    if info is not None:
        return info
    stage = key.partition("_")[0]
    group = stage if stage in ("s1", "s2") else "other"
    return MetricInfo(key, key, NO_DESCRIPTION, None, group, known=False)
