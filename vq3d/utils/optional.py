"""Packages beyond the core set, imported where they are used.

vq3d runs from a checkout (`python -m vq3d ...`) with only torch, numpy, pillow, pyyaml, tqdm,
safetensors and huggingface_hub importable, as on a GPU node that has no network. Everything else
(transformers, trimesh, scikit-image, imageio, tensorboard, scipy, triton, ...) is imported by the
function that needs it through `require`, whose error names the package, what needed it and how
to install it; the CLI prints it as one line naming the command.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vq3d.errors import UserError


class MissingPackage(UserError):
    """An optional package that the requested work needs is not installed."""


def require(module: str, package: str, needed_for: str) -> ModuleType:
    """`import module`, or a `MissingPackage` error: "<needed_for> needs the package <package>
    (pip install <package>)". module: the import name ("skimage.measure"); package: the name pip
    installs ("scikit-image")."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and not module.startswith(err.name.split(".")[0]):
            raise  # the package is there but one of its own imports failed: show that error
        raise MissingPackage(f"{needed_for} needs the package '{package}', which is not installed "
                             f"(pip install {package})") from None
