"""`vq3d synth`: generate (or continue) the built-in synthetic 3D dataset."""

from __future__ import annotations

import argparse

from vq3d.config import RenderConfig


def register(sub: argparse._SubParsersAction) -> None:
    defaults = RenderConfig()
    p = sub.add_parser(
        "synth", help="generate the built-in synthetic 3D dataset (exact depth and novel views)",
        description="Procedural scenes (one object of 5 shape classes in a textured room), ray cast "
                    "exactly with vq3d's cameras: canonical image, depth, K novel views with their "
                    "depths and cameras. Rerunning with the same settings continues an interrupted run.")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="dataset folder (new, empty, or one to continue)")
    p.add_argument("--n", type=int, required=True, help="number of scenes")
    p.add_argument("--res", type=int, required=True, help="image resolution (even, >= 8)")
    p.add_argument("--views", type=int, default=4, help="novel views per scene (default 4)")
    p.add_argument("--seed", type=int, default=0, help="scene i depends only on (seed, i)")
    p.add_argument("--camera-distance", type=float, default=defaults.camera_distance,
                   help=f"camera distance from the origin (default {defaults.camera_distance}: "
                        "render.camera_distance)")
    p.add_argument("--fov-deg", type=float, default=defaults.fov_deg,
                   help=f"field of view in degrees (default {defaults.fov_deg}: render.fov_deg)")
    p.add_argument("--sampling-radius", type=float, default=defaults.sampling_radius,
                   help=f"radius of the novel-camera disc (default {defaults.sampling_radius}: "
                        "render.sampling_radius)")
    p.add_argument("--supersample", type=int, default=2,
                   help="rays per pixel side, box-filtered (default 2; 1 = one ray through each pixel centre)")
    p.add_argument("--contact-sheet", metavar="PATH",
                   help="also write a PNG contact sheet of the first scenes")
    p.add_argument("--contact-sheet-rows", type=int, default=8,
                   help="scenes on the contact sheet (default 8)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that ray-cast the scenes (default 0: one per core, at most 8; the files "
                        "are the same for any number)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vq3d.data.synthetic import CameraSettings
    from vq3d.data.synthetic_dataset import write_contact_sheet
    from vq3d.data.synthetic_writer import generate_dataset
    from vq3d.errors import UserError

    if args.contact_sheet and args.contact_sheet_rows < 1:
        raise UserError(f"--contact-sheet-rows {args.contact_sheet_rows}: need at least one row")
    camera = CameraSettings(args.camera_distance, args.fov_deg, args.sampling_radius, args.supersample)
    card = generate_dataset(args.out, args.n, args.res, args.views, args.seed, camera,
                            progress=not args.no_progress, workers=args.workers)
    print(f"{args.out}: {card['n_scenes']} scenes ({card['n_train']} train, {card['n_test']} test), "
          f"{args.res}x{args.res}, {args.views} novel views each")
    if args.contact_sheet:
        print(f"contact sheet: {write_contact_sheet(args.out, args.contact_sheet, args.contact_sheet_rows)}")
    return 0
