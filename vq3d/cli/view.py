"""`vq3d view --stage1 RUN [--stage2 RUN2] [--port P] [--host H]`: the interactive 3D viewer."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help="interactive 3D viewer in the browser (upload, sample, orbit, download)")
    p.add_argument("--stage1", required=True, help="Stage-1 run, exported folder (vq3d export-run) or cached hub id")
    p.add_argument("--stage2", help="Stage-2 run, exported folder or cached hub id (enables sampling by class)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
    p.add_argument("--size", type=int, default=64, help="frame size while the camera moves")
    p.add_argument("--refine-size", type=int, default=0,
                   help="frame size once the camera stops (0 = max(2 x size, training resolution))")
    p.add_argument("--reach", type=float, default=3.0,
                   help="camera offsets reach this many training sampling radii")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload")
    p.add_argument("--max-sessions", type=int, default=16, help="browser tabs remembered at once")
    p.add_argument("--frames", type=int, default=36, help="frames of the orbit video download")
    p.add_argument("--mesh-res", type=int, default=64, help="marching-cubes grid of the mesh download")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from vq3d.errors import UserError
    from vq3d.viewer import ViewerOptions, serve

    too_small = min(args.frames, args.max_sessions) < 1 or args.mesh_res < 2
    if too_small or min(args.max_upload_mb, args.reach) <= 0:
        raise UserError("--frames, --max-sessions, --max-upload-mb and --reach must be positive, "
                        "and --mesh-res at least 2")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must lie in [0, 65535], got {args.port}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    max_upload_bytes = int(args.max_upload_mb * 1024 * 1024)
    options = ViewerOptions(interactive_size=args.size, refine_size=args.refine_size,
                            max_offset_factor=args.reach, max_upload_bytes=max_upload_bytes,
                            video_frames=args.frames, mesh_resolution=args.mesh_res,
                            max_sessions=args.max_sessions)
    serve(args.stage1, args.stage2, host=args.host, port=args.port, options=options, device=args.device,
          open_browser=args.open)
    return 0
