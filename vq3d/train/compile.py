"""`train.compile`: compile the regions of Stage 1 that compile cleanly (docs/design.md).

Compiling the whole training forward breaks into many graphs (the renderer's custom autograd
Functions, its chunk loops, the quantizer's collectives and scatter, torch.Generator
arguments) and recompiles as the Python step number changes. These regions take only tensors
of fixed shapes and compile as one graph each (`fullgraph=True`): the ViT encoder and decoder
(most of the paper preset's FLOPs) and the discriminators. The renderer stays eager: its work
is a few large kernels per level (`vq3d.render.execution`) whose hand-written backward already
recomputes what a compiler would fuse. `nn.Module.compile` compiles in place, so parameter
names (and checkpoints) do not change.
"""

from __future__ import annotations

from torch import nn


def compile_regions(model: nn.Module, extra: list[nn.Module] = ()) -> list[str]:
    """Compile `model.encoder`, `model.decoder` and the modules in `extra` in place; returns the
    names of what was compiled."""
    names = []
    for name, module in [("encoder", model.encoder), ("decoder", model.decoder),
                         *((f"discriminator{i}", m) for i, m in enumerate(extra))]:
        module.compile(fullgraph=True, dynamic=False)
        names.append(name)
    return names
