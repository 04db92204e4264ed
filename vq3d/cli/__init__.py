"""The `vq3d` command: a thin layer that parses arguments and calls library functions.

Each sub-command lives in its own module of this package and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int | None`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vq3d.config import ConfigError
from vq3d.errors import UserError

# Sub-command modules, in the order `vq3d --help` lists them.
COMMAND_MODULES = [
    "vq3d.cli.synth",
    "vq3d.cli.data",
    "vq3d.cli.depth",
    "vq3d.cli.train",
    "vq3d.cli.tokens",
    "vq3d.cli.generate",
    "vq3d.cli.reconstruct",
    "vq3d.cli.export_run",
    "vq3d.cli.eval",
    "vq3d.cli.view",
    "vq3d.cli.demo",
    "vq3d.cli.bench",
]


def add_config_args(parser: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    """--preset / --config / --set, shared by every command that builds a `Config`."""
    parser.add_argument("--preset", default=default_preset, help="tiny, demo or paper")
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="YAML file overriding the preset (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        dest="overrides", help="override one config field (repeatable)")


def config_from_args(args: argparse.Namespace):
    """The `Config` that --preset, --config and --set describe."""
    from vq3d.config import load_config

    return load_config(args.preset, args.config, args.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vq3d", description="VQ3D: 3D-aware generation and single-image-to-NeRF.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError) as err:
        print(f"vq3d {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
