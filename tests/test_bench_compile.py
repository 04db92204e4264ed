"""`vq3d bench compile`: its JSON and its pieces, without compiling (compiling the tiny model takes
a minute on 2 cores; `tests/test_stage1_compile.py` tests the compiled regions themselves)."""

import json

import pytest
import torch

from vq3d.bench import compile as bench_compile
from vq3d.config import tiny
from vq3d.models.stage1 import Stage1Model


def test_compile_blocks_marks_every_transformer_block():
    cfg = tiny()
    model = Stage1Model(cfg)
    count = bench_compile.compile_blocks(model)
    assert count == cfg.model.enc_layers + cfg.model.dec_layers
    blocks = [m for m in model.modules() if isinstance(m, bench_compile.Block)]
    assert len(blocks) == count and all(b._compiled_call_impl is not None for b in blocks)
    assert model.encoder._compiled_call_impl is None  # only the blocks


def test_autoencoder_pass_fills_every_gradient_afresh():
    torch.manual_seed(0)
    model = Stage1Model(tiny())
    run = bench_compile.autoencoder_pass(model, torch.rand(2, 3, 16, 16) * 2 - 1)
    run()
    first = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("encoder.") for n in first) and any(n.startswith("decoder.") for n in first)
    run()  # zeroed before each pass: the same gradients, not twice them
    for n, p in model.named_parameters():
        if n in first:
            assert torch.allclose(p.grad, first[n], atol=1e-6), n


def test_eager_only_json(capsys):
    assert bench_compile.main(["--preset", "tiny", "--variants", "eager", "--rounds", "2", "--calls", "1",
                               "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["benchmark"] == "compile" and result["batch"] == tiny().train.batch_size
    assert list(result["variants"]) == ["eager"]
    eager = result["variants"]["eager"]
    assert len(eager["rounds_ms"]) == 2 and eager["ms_per_pass"] > 0


def test_unknown_variant_is_refused():
    with pytest.raises(SystemExit):
        bench_compile.main(["--variants", "eager,fused"])
