"""The viewer's model side: reconstruct uploads, sample scenes, render frames, build downloads.

One Stage-1 model (and optionally a Stage-2 GPT) serves every browser tab. Each model call
runs under that model's lock and in inference mode, so concurrent requests queue instead of
fighting over the cores; long jobs (orbit videos, meshes) take the lock per frame or chunk,
so other tabs keep getting frames meanwhile.

Cameras are the training cameras' family: the canonical camera moved by an offset (dx, dy) in
the plane tangent to the camera sphere and re-aimed at the origin
(`vq3d.render.cameras.disc_offsets_to_cameras`). Offsets reach `max_offset_factor` times the
training sampling radius, i.e. beyond the views the model was trained on.
"""

from __future__ import annotations

import math
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vq3d.data.decode import BadImageError, load_crop
from vq3d.errors import UserError
from vq3d.export import depth_to_points, orbit_frames, scene_mesh, write_mesh, write_ply, write_video
from vq3d.render.cameras import Cameras, disc_offsets_to_cameras
from vq3d.utils.images import colorize, to_uint8, to_unit

RENDER_MODES = ("rgb", "depth", "side")  # RGB, colorized disparity, both side by side
MIN_FRAME_SIZE = 8

# download kind -> (content type, file name)
EXPORT_KINDS = {
    "mp4": ("video/mp4", "orbit.mp4"),
    "gif": ("image/gif", "orbit.gif"),
    "points.ply": ("application/octet-stream", "points.ply"),
    "mesh.ply": ("application/octet-stream", "mesh.ply"),
    "mesh.obj": ("text/plain; charset=utf-8", "mesh.obj"),
    "mesh.glb": ("model/gltf-binary", "mesh.glb"),
}


@dataclass
class ViewerOptions:
    """Knobs of the viewer (the `vq3d view` flags)."""

    interactive_size: int = 64  # frame size (pixels) while the camera moves
    refine_size: int = 0  # frame size once the camera stops; 0 = max(2 * interactive, model resolution)
    max_offset_factor: float = 3.0  # camera offsets reach this many training sampling radii
    max_upload_bytes: int = 20 * 1024 * 1024  # larger uploads are refused (HTTP 413)
    max_upload_pixels: int = 40_000_000  # larger images are refused before decoding
    video_frames: int = 36  # frames of the orbit video
    video_fps: int = 12
    video_size: int = 0  # orbit video frame size; 0 = the refine size
    mesh_resolution: int = 64  # marching-cubes grid of the mesh download
    max_sessions: int = 16  # browser tabs remembered at once (least recently used dropped)


class ViewerError(Exception):
    """A request the viewer refuses: `status` is the HTTP status, the message is shown on the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _LockedModel:
    """The parts of a Stage-1 model that `orbit_frames` uses, each render call under the lock."""

    def __init__(self, model, lock: threading.Lock) -> None:
        self._model, self._lock, self.cfg = model, lock, model.cfg

    def parameters(self):
        return self._model.parameters()

    def render(self, *args, **kwargs):
        with self._lock, torch.inference_mode():
            return self._model.render(*args, **kwargs)


class ViewerEngine:
    """Stage-1 model (+ optional Stage-2 GPT) shared by every session of a viewer server."""

    def __init__(self, model, options: ViewerOptions | None = None, gpt=None, stage2_cfg=None,
                 stage2_meta: dict | None = None) -> None:
        self.model = model.eval()
        self.cfg = model.cfg
        self.options = options or ViewerOptions()
        self.gpt = gpt.eval() if gpt is not None else None
        self.stage2_cfg = stage2_cfg
        self.stage2_meta = stage2_meta or {}
        self.device = next(model.parameters()).device
        self.lock = threading.Lock()  # Stage-1 model calls
        self.gpt_lock = threading.Lock()  # Stage-2 sampling
        o = self.options
        if o.interactive_size < MIN_FRAME_SIZE:
            raise UserError(f"the interactive size must be at least {MIN_FRAME_SIZE} pixels, "
                            f"got {o.interactive_size}")
        self.interactive_size = o.interactive_size
        self.refine_size = o.refine_size or max(2 * o.interactive_size, model.resolution)
        if self.refine_size < self.interactive_size:
            raise UserError(f"the refine size ({self.refine_size}) must be at least the interactive size "
                            f"({self.interactive_size})")
        r = self.cfg.render
        radius = r.sampling_radius if r.sampling_radius > 0 else 0.1 * r.camera_distance
        reach = o.max_offset_factor * radius
        self.max_offset = round(float(min(reach, 0.9 * r.camera_distance)), 6)

    @classmethod
    def load(cls, stage1_run: str | Path, stage2_run: str | Path | None = None,
             options: ViewerOptions | None = None, device: str = "cpu") -> ViewerEngine:
        """Load the models of trained runs (Stage 2 checked against Stage 1's codebook)."""
        from vq3d.train.runs import load_stage1

        model, _ = load_stage1(stage1_run, device)
        gpt = cfg2 = meta = None
        if stage2_run is not None:
            from vq3d.data.tokens import check_stage2_matches
            from vq3d.train.stage2 import load_stage2

            gpt, cfg2, meta = load_stage2(stage2_run, device)
            check_stage2_matches(stage1_run, model, meta, stage2_run)
        return cls(model, options, gpt, cfg2, meta)

    # -- what the page needs to know -------------------------------------------------------------

    @property
    def can_sample(self) -> bool:
        return self.gpt is not None

    @property
    def class_names(self) -> list[str]:
        meta = self.stage2_meta
        if not meta.get("num_classes"):
            return []
        names = meta.get("class_names") or []
        if len(names) == meta["num_classes"]:
            return list(names)
        return [str(k) for k in range(meta["num_classes"])]

    def info(self) -> dict[str, Any]:
        r = self.cfg.render
        return {
            "resolution": self.model.resolution, "interactive_size": self.interactive_size,
            "refine_size": self.refine_size, "sampling_radius": r.sampling_radius,
            "max_offset": self.max_offset,
            "camera_distance": r.camera_distance, "fov_deg": r.fov_deg, "modes": list(RENDER_MODES),
            "can_sample": self.can_sample, "classes": self.class_names,
            "max_upload_bytes": self.options.max_upload_bytes, "exports": list(EXPORT_KINDS),
        }

    # -- scenes ---------------------------------------------------------------------------------

    def reconstruct(self, data: bytes) -> tuple[Any, np.ndarray]:
        """One forward pass from uploaded image bytes. Returns (scene, centre crop (res, res, 3) uint8).

        Decoding is the datasets' robust decoding (`load_crop`); anything unreadable is a ViewerError.
        """
        self.check_upload_size(len(data))
        if not data:
            raise ViewerError(400, "the upload is empty: choose an image file")
        try:
            crop = load_crop(bytes(data), self.model.resolution, max_pixels=self.options.max_upload_pixels)
        except BadImageError as err:
            detail = f" ({err.detail})" if err.detail and err.reason != "not an image" else ""
            raise ViewerError(415 if err.reason == "not an image" else 400,
                              f"cannot use this upload: {err.reason}{detail}; upload a JPEG, PNG, WebP, "
                              "GIF, BMP or TIFF image") from None
        image = torch.from_numpy(crop).permute(2, 0, 1)[None].float().div(127.5).sub(1.0).to(self.device)
        with self.lock, torch.inference_mode():
            scene = self.model.decode_codes(self.model.quantize(image).codes)
        return scene, crop

    def check_upload_size(self, n_bytes: int) -> None:
        """ViewerError 413 when an upload of `n_bytes` exceeds the limit."""
        limit = self.options.max_upload_bytes
        if n_bytes > limit:
            raise ViewerError(413, f"the upload is too large: {_mb(n_bytes)}, the limit is {_mb(limit)}; "
                                   "choose a smaller image")

    def sample_scene(self, class_label: str | None = None, seed: int = 0) -> tuple[Any, str]:
        """A new scene from Stage 2. Returns (scene, a description such as "class sphere, seed 3")."""
        from vq3d.generate import resolve_class
        from vq3d.models.sampling import sample

        if self.gpt is None:
            raise ViewerError(400, "sampling needs a Stage-2 model: start the viewer with --stage2 RUN2")
        if not 0 <= seed < 2**63:
            raise ViewerError(400, f"the seed must be a whole number >= 0, got {seed}")
        meta, s = self.stage2_meta, self.stage2_cfg.sample
        num_classes = int(meta.get("num_classes", 0))
        try:
            label = resolve_class(class_label if class_label not in (None, "") else None,
                                  meta.get("class_names", []), num_classes)
        except UserError as err:
            raise ViewerError(400, str(err).replace("--class", "the class")) from None
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        labels = None
        if num_classes:
            if label is None:  # no class chosen: a random one, as `vq3d generate` does
                label = int(torch.randint(num_classes, (1,), generator=generator, device=self.device))
            labels = torch.full((1,), label, dtype=torch.long, device=self.device)
        with self.gpt_lock:
            ids = sample(self.gpt, 1, labels, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                         guidance=s.guidance, generator=generator, use_cache=s.use_kv_cache)
        with self.lock, torch.inference_mode():
            scene = self.model.decode(ids)
        name = self.class_names[label] if label is not None else "unconditional"
        return scene, (f"class {name}, seed {seed}" if label is not None else f"{name}, seed {seed}")

    # -- frames ---------------------------------------------------------------------------------

    def camera(self, dx: float, dy: float) -> Cameras:
        """The camera moved by (dx, dy) in the tangent plane (each clamped to +-max_offset)."""
        if not (math.isfinite(dx) and math.isfinite(dy)):
            raise ViewerError(400, "camera offsets must be finite numbers")
        m = self.max_offset
        offsets = torch.tensor([[min(max(dx, -m), m), min(max(dy, -m), m)]], dtype=torch.float32)
        r = self.cfg.render
        return disc_offsets_to_cameras(offsets, r.camera_distance, r.fov_deg).to(self.device)

    def check_size(self, size: int) -> int:
        if not MIN_FRAME_SIZE <= size <= self.refine_size:
            raise ViewerError(400, f"frame size must lie in [{MIN_FRAME_SIZE}, {self.refine_size}], "
                                   f"got {size}")
        return size

    def render_frame(self, scene, dx: float, dy: float, mode: str = "rgb",
                     size: int | None = None) -> np.ndarray:
        """A frame (S, S, 3) uint8 (S, 2S, 3 for "side": RGB | depth) from offset (dx, dy).

        Depth is the rendered disparity, colorized (Turbo, per-frame min-max; near is red).
        """
        if mode not in RENDER_MODES:
            raise ViewerError(400, f"unknown mode '{mode}': use one of {', '.join(RENDER_MODES)}")
        size = self.check_size(self.interactive_size if size is None else size)
        cams = self.camera(dx, dy)
        with self.lock, torch.inference_mode():
            out = self.model.render(scene, cams, size, size)
        tiles = []
        if mode in ("rgb", "side"):
            tiles.append(to_unit(out.rgb[0]))
        if mode in ("depth", "side"):
            tiles.append(colorize(out.disparity[:1])[0])
        return to_uint8(torch.cat(tiles, dim=-1))

    # -- downloads ------------------------------------------------------------------------------

    def export(self, entry, kind: str, dx: float = 0.0, dy: float = 0.0, mode: str = "rgb") -> bytes:
        """The bytes of one download of a session's scene (`EXPORT_KINDS`).

        mp4 / gif: an orbit along the rim of the training sampling disc (RGB, or RGB | depth when
        `mode` is depth or side). points.ply: the coloured point cloud of the current view at the
        refine size. mesh.ply / mesh.obj / mesh.glb: marching cubes on the density field over [-1, 1]^3,
        vertex colours from the NeRF.
        """
        if kind not in EXPORT_KINDS:
            raise ViewerError(400, f"unknown download '{kind}': use one of {', '.join(EXPORT_KINDS)}")
        o = self.options
        with tempfile.TemporaryDirectory(prefix="vq3d_view_") as tmp:
            folder = Path(tmp)
            if kind in ("mp4", "gif"):
                size = o.video_size or self.refine_size
                frames = orbit_frames(_LockedModel(self.model, self.lock), entry.scene, o.video_frames,
                                      self.cfg.render.sampling_radius, size, with_depth=mode != "rgb")
                write_video(folder / "orbit", frames, fps=o.video_fps)
                return (folder / f"orbit.{kind}").read_bytes()
            if kind == "points.ply":
                cams = self.camera(dx, dy)
                with self.lock, torch.inference_mode():
                    out = self.model.render(entry.scene, cams, self.refine_size, self.refine_size)
                points, colors = depth_to_points(cams, out.depth, out.rgb, out.opacity)
                write_ply(folder / "points.ply", points, colors)
                return (folder / "points.ply").read_bytes()
            write_mesh(folder / kind, *self._mesh(entry))
            return (folder / kind).read_bytes()

    def _mesh(self, entry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mesh = entry.cache.get("mesh")
        if mesh is None:
            with self.lock:
                mesh = scene_mesh(self.model, entry.scene, self.options.mesh_resolution)
            entry.cache["mesh"] = mesh
        return mesh


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 100 * 1024 else f"{n / 1024:.1f} KB"
