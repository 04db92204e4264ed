"""Camera updates per second of the interactive viewer on the CPU (`vq3d bench viewer --json`).

A camera update is what the page asks for while the user drags: GET /api/frame at the
interactive size, i.e. render + colorize + PNG encoding + HTTP on localhost. It is measured
through the real server (started in a thread; one request at a time over a kept-alive
connection, as the page sends them)
along a drag path that sweeps the offset square out to the viewer's reach, after one warm-up
pass; best of --repeats rounds; then the same at the refine size (the frame shown once the
camera stops), and the renderer alone at both sizes (to show the HTTP + PNG overhead).

The model is the `demo` preset randomly initialised (the speed does not depend on the
weights) or a trained `--stage1 RUN`. Target: 10 camera updates per second at the interactive
size; `fps_over_target` = interactive fps / 10.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import math
import platform
import sys
import threading
import time
import urllib.request

import numpy as np
import torch
from PIL import Image

TARGET_FPS = 10.0


def drag_path(n: int, reach: float) -> list[tuple[float, float]]:
    """n camera offsets (dx, dy) along a spiral from the centre out to `reach` (a long drag)."""
    out = []
    for i in range(n):
        t = i / max(1, n - 1)
        angle = 4 * math.pi * t
        out.append((reach * t * math.cos(angle), reach * t * math.sin(angle)))
    return out


def _test_image(size: int = 96) -> bytes:
    """A PNG with structure (gradients and a disc) to reconstruct."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    disc = ((xx - 0.5) ** 2 + (yy - 0.55) ** 2 < 0.08).astype(float)
    rgb = np.stack([xx, yy, 0.3 + 0.6 * disc], axis=-1)
    buf = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _engine(args: argparse.Namespace):
    from vq3d.config import load_config
    from vq3d.models.stage1 import Stage1Model
    from vq3d.viewer import ViewerEngine, ViewerOptions

    options = ViewerOptions(interactive_size=args.size, refine_size=args.refine_size)
    if args.stage1:
        return ViewerEngine.load(args.stage1, options=options), f"run {args.stage1}"
    torch.manual_seed(0)
    model = Stage1Model(load_config(args.preset))
    return ViewerEngine(model, options), f"{args.preset} preset, random weights"


def _http_fps(server, session: str, offsets: list[tuple[float, float]], size: int, mode: str) -> float:
    """Frames per second of GET /api/frame over one kept-alive connection (as a browser tab)."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=120)

    def get(dx: float, dy: float) -> None:
        query = f"session={session}&dx={dx:.5f}&dy={dy:.5f}&mode={mode}&size={size}"
        connection.request("GET", f"/api/frame?{query}")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"frame request failed ({response.status}): {body[:200]!r}")

    try:
        for dx, dy in offsets[: max(2, len(offsets) // 5)]:  # warm-up
            get(dx, dy)
        start = time.perf_counter()
        for dx, dy in offsets:
            get(dx, dy)
        return len(offsets) / (time.perf_counter() - start)
    finally:
        connection.close()


def _render_fps(engine, scene, offsets: list[tuple[float, float]], size: int, mode: str) -> float:
    engine.render_frame(scene, *offsets[0], mode, size)
    start = time.perf_counter()
    for dx, dy in offsets:
        engine.render_frame(scene, dx, dy, mode, size)
    return len(offsets) / (time.perf_counter() - start)


def measure(args: argparse.Namespace) -> dict:
    from vq3d.viewer import make_server

    engine, model_text = _engine(args)
    server = make_server(engine=engine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = server.url
        with urllib.request.urlopen(urllib.request.Request(url + "api/session", data=b"")) as r:
            session = json.loads(r.read())["session"]
        upload = urllib.request.Request(url + f"api/upload?session={session}&name=bench.png",
                                        data=_test_image())
        with urllib.request.urlopen(upload) as r:
            r.read()
        scene = server.sessions.get(session).entry.scene
        offsets = drag_path(args.frames, engine.max_offset)
        refine_offsets = offsets[:: max(1, len(offsets) // max(1, args.refine_frames))][: args.refine_frames]
        # best of `repeats` rounds, each running every measurement once (load from other
        # processes on a shared machine hits all of them alike)
        fps = refine_fps = render_fps = render_refine_fps = 0.0
        for _ in range(args.repeats):
            small, large = engine.interactive_size, engine.refine_size
            fps = max(fps, _http_fps(server, session, offsets, small, args.mode))
            refine_fps = max(refine_fps, _http_fps(server, session, refine_offsets, large, args.mode))
            render_fps = max(render_fps, _render_fps(engine, scene, offsets, small, args.mode))
            render_refine_fps = max(render_refine_fps,
                                    _render_fps(engine, scene, refine_offsets, large, args.mode))
    finally:
        server.shutdown()
        server.server_close()
    return {
        "benchmark": "viewer", "device": "cpu", "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(), "model": model_text, "model_resolution": engine.model.resolution,
        "mode": args.mode, "frames": len(offsets), "repeats": args.repeats, "reach": engine.max_offset,
        "interactive_size": engine.interactive_size, "refine_size": engine.refine_size,
        "fps": fps, "target_fps": TARGET_FPS, "fps_over_target": fps / TARGET_FPS,
        "refine_fps": refine_fps, "refine_frames": len(refine_offsets),
        "render_only_fps": render_fps, "render_only_refine_fps": render_refine_fps,
        "http_png_overhead_ms": 1000.0 * (1.0 / fps - 1.0 / render_fps),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vq3d bench viewer", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--stage1", help="a trained Stage-1 run (default: the preset, randomly initialised)")
    parser.add_argument("--preset", default="demo", choices=["tiny", "demo", "paper"])
    parser.add_argument("--size", type=int, default=64, help="interactive frame size (the viewer's default)")
    parser.add_argument("--refine-size", type=int, default=0,
                        help="refine frame size (0: the viewer's default)")
    parser.add_argument("--frames", type=int, default=40, help="camera updates timed at the interactive size")
    parser.add_argument("--refine-frames", type=int, default=8, help="frames timed at the refine size")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (the best is kept)")
    parser.add_argument("--mode", default="rgb", choices=["rgb", "depth", "side"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.frames < 2 or args.refine_frames < 1 or args.repeats < 1:
        print("vq3d bench viewer: error: --frames must be >= 2, --refine-frames and --repeats >= 1",
              file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    report = measure(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['fps']:.1f} camera updates/s at {report['interactive_size']} px "
              f"({report['fps_over_target']:.2f}x the {TARGET_FPS:.0f} fps target); "
              f"{report['refine_fps']:.1f} fps at {report['refine_size']} px")
    return 0
