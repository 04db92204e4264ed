"""`train.compile`: compile the regions of Stage 1 that compile cleanly (docs/design.md).

Compiling the whole training forward breaks into many graphs (the renderer's custom autograd
Functions, its chunk loops, the quantizer's collectives and scatter, torch.Generator
arguments) and recompiles as the Python step number changes. These regions take only tensors
of fixed shapes and compile as one graph each (`fullgraph=True`): the ViT encoder and decoder,
most of the paper preset's FLOPs. The discriminators stay eager because lazy R1 differentiates
their gradient, and compiled graphs (AOT autograd) have no double backward. The renderer's
compiled pieces are its own switch, `render.compile_field` (`vq3d.render.execution.compile_once`):
the chunks of its torch path, inside its hand-written autograd Functions. `nn.Module.compile`
compiles in place, so parameter names (and checkpoints) do not change.
"""

from __future__ import annotations

from torch import nn


def compile_regions(model: nn.Module) -> list[str]:
    """Compile `model.encoder` and `model.decoder` in place; returns the names compiled."""
    for module in (model.encoder, model.decoder):
        module.compile(fullgraph=True, dynamic=False)
    return ["encoder", "decoder"]
