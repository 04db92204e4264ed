"""`vq3d data check DIR`: report usable and unusable images of a dataset (exit 1: none usable)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect datasets")
    actions = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="scan a dataset: usable images, classes, sizes, every unusable file",
        description="Decode every image of a dataset and report. Exit status 0 when at least "
                    "one image is usable, 1 when none is, 2 on bad arguments.")
    check.add_argument("path", help="image folder, file list (.csv/.jsonl) or WebDataset shards")
    check.add_argument("--kind", default="auto",
                       choices=["auto", "synthetic", "folder", "flat", "filelist", "webdataset"])
    check.add_argument("--res", type=int, default=None,
                       help="training resolution: count images smaller than it")
    check.add_argument("--quick", action="store_true",
                       help="header check only (does not find truncated files)")
    check.add_argument("--workers", type=int, default=0, help="decoding processes (0: auto)")
    check.add_argument("--max-pixels", type=int, default=None,
                       help="images above this many pixels are unusable (default: ~89M)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from vq3d.data.check import check_dataset, format_report
    from vq3d.data.decode import DEFAULT_MAX_PIXELS

    report = check_dataset(args.path, args.kind, resolution=args.res, decode=not args.quick,
                           max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, workers=args.workers)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.usable > 0 else 1
