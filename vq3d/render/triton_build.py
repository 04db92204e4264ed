"""Compile the fused renderer's kernels (`vq3d.render.triton_level`) for a GPU architecture on a
machine without one, and read what the GPU's compiler reports: registers per thread, bytes
spilled to local memory, shared memory.

Why: Triton's interpreter (how CI checks the kernels' numbers on a CPU) runs the kernels as
Python and accepts code that the GPU compiler refuses (a non-constexpr global, a `tl.dot` on a
tile under 16, a dtype mix), so a kernel could pass every CPU test and fail on its first GPU.
Triton compiles to PTX and then to a cubin with the ptxas it ships, and neither step needs a GPU
or a driver: `build_report` runs that whole pipeline for the sizes a config renders at. Under
the interpreter (TRITON_INTERPRET=1, as in the tests) the kernels are Python functions that
cannot be compiled, so `build_report` then compiles in a child process without it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import torch

from vq3d.config import Config
from vq3d.config.io import from_dict, to_dict
from vq3d.render.fused import LAUNCH, Launch, kernel_constants, level_settings

# the kernels' scalar arguments and their Triton types; every other non-constexpr argument is a
# pointer to fp32 but for the planes' table, whose dtype is the features'
_SCALARS = {"n_rays": "i32", "n_blocks": "i32", "programs": "i32", "rays_per_batch": "i32", "near": "fp32", "inv_far": "fp32", "scene_scale": "fp32",
            "plane_scale": "fp32"}
_POINTER_DTYPES = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}
_PTXAS_LINE = {"registers": re.compile(r"Used (\d+) registers"),
               "spill_store_bytes": re.compile(r"(\d+) bytes spill stores"),
               "spill_load_bytes": re.compile(r"(\d+) bytes spill loads"),
               "stack_bytes": re.compile(r"(\d+) bytes stack frame")}


def compile_kernel(name: str, constants: dict, table_dtype: torch.dtype = torch.float32, arch: int = 90,
                   warps: int = 4):
    """Triton's compiled kernel `name` ("_level_fwd" or "_level_bwd") for CUDA compute
    capability `arch` (90: H100/H200) at `warps` warps per program, specialised on `constants`
    (`kernel_constants`, plus TABLE_GRAD for the backward). Raises triton's CompilationError
    where the GPU compiler refuses."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from vq3d.render import triton_level

    if interpreting():
        raise RuntimeError("TRITON_INTERPRET=1 turns the kernels into Python; compile without it "
                           "(build_report does so in a child process)")
    kernel = getattr(triton_level, name)
    missing = [arg for arg in kernel.arg_names if arg.isupper() and arg not in constants]
    if missing:
        raise ValueError(f"{name} needs the constants {missing}")
    signature = {}
    for arg in kernel.arg_names:
        if arg in constants:
            signature[arg] = "constexpr"
        elif arg in _SCALARS:
            signature[arg] = _SCALARS[arg]
        else:
            signature[arg] = _POINTER_DTYPES[table_dtype] if arg == "table" else "*fp32"
    constexprs = {(kernel.arg_names.index(arg),): value for arg, value in constants.items()}
    source = ASTSource(kernel, signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def resource_usage(compiled, arch: int = 90) -> dict:
    """Registers per thread, spilled bytes and stack of a compiled kernel (ptxas -v on its PTX),
    its shared memory and warps (Triton's metadata)."""
    from triton.backends.nvidia.compiler import get_ptxas

    suffix = "a" if arch >= 90 else ""  # Triton targets sm_90a on Hopper
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
        ptx.write(compiled.asm["ptx"])
        ptx.flush()
        result = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}{suffix}", ptx.name,
                                 "-o", "/dev/null"], capture_output=True, text=True, check=True)
    report = result.stdout + result.stderr
    usage = {}
    for key, pattern in _PTXAS_LINE.items():
        found = pattern.search(report)
        usage[key] = int(found.group(1)) if found else 0
    usage["shared_bytes"] = int(compiled.metadata.shared)
    usage["warps"] = int(compiled.metadata.num_warps)
    return usage


def build_report(config: Config, arch: int = 90,
                 table_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16),
                 launch: Launch = LAUNCH) -> dict:
    """Each kernel of each of the config's render levels (proposal: density only; NeRF: density and colour)
    compiled for `arch` with planes of each dtype, and what the compiler reports. Keys
    "<level>/<dtype>/<fwd|bwd>"; the proposal level's backward is compiled as the training render
    runs it, without the planes' gradient unless `render.proposal_feature_grad`. `launch`: the
    rays and warps per program of each kernel."""
    if interpreting():
        request = {"config": to_dict(config), "arch": arch, "dtypes": [str(d).removeprefix("torch.") for d in table_dtypes],
                   "launch": vars(launch)}
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        child = subprocess.run([sys.executable, "-m", "vq3d.render.triton_build"], input=json.dumps(request),
                               capture_output=True, text=True, env=env)
        if child.returncode != 0:
            raise RuntimeError(f"compiling the kernels for sm_{arch} failed:\n{child.stderr[-4000:]}")
        return json.loads(child.stdout)
    cfg, model = config.render, config.model
    opaque_last = cfg.background == "none"
    levels = {"proposal": (cfg.proposal_samples[0], 1, cfg.proposal_feature_grad),
              "nerf": (cfg.nerf_samples, 4, True)} if cfg.proposal_samples else {"nerf": (cfg.nerf_samples, 4, True)}
    report: dict = {"arch": f"sm_{arch}", "launch": vars(launch)}
    for level, (samples, outputs, table_grad) in levels.items():
        settings = level_settings(cfg, model.plane_channels, cfg.mlp_hidden, outputs, model.plane_resolution,
                                  cfg.plane_reduce, opaque_last)
        for dtype in table_dtypes:
            dtype_name = str(dtype).removeprefix("torch.")
            for name, rays, warps, extra in (("fwd", launch.fwd_rays, launch.fwd_warps, {}),
                                             ("bwd", launch.bwd_rays, launch.bwd_warps, {"TABLE_GRAD": table_grad})):
                constants = {**kernel_constants(settings, samples, rays), **extra}
                compiled = compile_kernel(f"_level_{name}", constants, dtype, arch, warps)
                report[f"{level}/{dtype_name}/{name}"] = resource_usage(compiled, arch)
    return report


if __name__ == "__main__":  # build_report's child process: a JSON request on stdin, the report on stdout
    _request = json.load(sys.stdin)
    _report = build_report(from_dict(_request["config"]), _request["arch"],
                           tuple(getattr(torch, name) for name in _request["dtypes"]), Launch(**_request["launch"]))
    print(json.dumps(_report))
