"""The fused renderer's kernels compile for a GPU on this CPU-only machine (Triton's compiler and
ptxas need no GPU). Triton's interpreter, which checks the kernels' numbers in
test_render_triton.py, accepts code that the GPU compiler refuses; this is the check that the
kernels would build on an H100/H200 (sm_90) at the sizes the presets render."""

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

pytest.importorskip("triton")

from vq3d.config.presets import paper, tiny  # noqa: E402
from vq3d.render.triton_build import build_report  # noqa: E402


def test_the_paper_sizes_kernels_build_for_sm90_in_both_plane_dtypes():
    report = build_report(paper())
    kernels = [key for key in report if "/" in key]
    assert sorted(kernels) == sorted(f"{level}/{dtype}/{name}" for level in ("proposal", "nerf")
                                     for dtype in ("float32", "bfloat16") for name in ("fwd", "bwd"))
    for key in kernels:
        usage = report[key]
        assert 0 < usage["registers"] <= 255, key  # ptxas's report was read
        assert usage["warps"] > 0 and usage["shared_bytes"] >= 0


def test_other_render_settings_build_too():
    """The tiny preset's sizes (C, hidden under the 16 that tl.dot tiles pad to), the L-inf
    contraction, an opaque last interval and proposal levels that train the planes."""
    cfg = tiny()
    cfg.render = replace(cfg.render, contraction="linf", background="none", proposal_feature_grad=True)
    report = build_report(cfg, table_dtypes=(torch.float32,))
    assert {"proposal/float32/bwd", "nerf/float32/bwd"} <= set(report)


def test_what_the_gpu_compiler_refuses_is_an_error_here(tmp_path):
    """A kernel asked for without one of its constants fails before compiling, and a compile the
    GPU compiler refuses raises: a plain (non-constexpr) global read by a kernel, which the
    interpreter runs and the compiler refuses. Run in a child process without the interpreter,
    where the kernels compile."""
    code = """
import pytest
from triton.compiler.errors import CompilationError
from vq3d.config.presets import paper
from vq3d.render.fused import kernel_constants, level_settings
from vq3d.render.triton_build import compile_kernel, resource_usage
settings = level_settings(paper().render, 32, 32, 4, 64, "sum", False)
with pytest.raises(ValueError, match="TABLE_GRAD"):
    compile_kernel("_level_bwd", kernel_constants(settings, 8, 32))
from vq3d.render import triton_level
constexpr_delta, triton_level.MAX_DELTA = triton_level.MAX_DELTA, 1e10
with pytest.raises(CompilationError) as refused:
    compile_kernel("_level_fwd", kernel_constants(settings, 8, 32))
assert "MAX_DELTA" in str(refused.value.__cause__)
triton_level.MAX_DELTA = constexpr_delta
assert resource_usage(compile_kernel("_level_fwd", kernel_constants(settings, 8, 32)))["registers"] > 0
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # Triton's cache keys on the source, not a global's value
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert child.returncode == 0 and child.stdout.strip() == "ok", child.stderr[-3000:]
