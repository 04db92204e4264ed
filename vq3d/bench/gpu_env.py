"""The environment section of `vq3d bench gpu`: what the machine has, read without running work.

torch, CUDA, cuDNN, NCCL and Triton versions, the driver, the GPU's name, memory, compute
capability and dense bf16 peak, and whether `torch.compile` can build here (Inductor's Triton
launchers are compiled at run time: they need a C compiler and the Python headers).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks in TFLOP/s (NVIDIA data sheets; SXM parts), matched by a substring of
# the device name, longest key first.
PEAK_BF16_TFLOPS = {"GH200": 989.4, "H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "H800": 989.4,
                    "B200": 2250.0, "A100": 312.0, "A800": 312.0, "L40S": 362.1, "L4": 121.0,
                    "A10G": 70.0, "RTX 4090": 165.2, "RTX 3090": 71.0}


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak (FLOP/s) of a GPU by its name, or None if unknown."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16_TFLOPS[key] * 1e12
    return None


def compile_toolchain() -> dict:
    """Whether Inductor can build its launchers: a C compiler (CC, cc, gcc or clang) and Python.h."""
    candidates = [os.environ.get("CC", ""), "cc", "gcc", "clang"]
    compiler = next((shutil.which(c) for c in candidates if c and shutil.which(c)), None)
    include = sysconfig.get_paths().get("include") or ""
    headers = bool(include) and Path(include, "Python.h").is_file()
    missing = [what for what, ok in (("a C compiler (gcc or clang)", compiler), ("the Python headers "
                                      f"(Python.h in {include or '?'})", headers)) if not ok]
    return {"c_compiler": compiler, "python_headers": headers, "python_include": include,
            "can_compile": not missing, "missing": missing}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _driver_version() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def environment(device: torch.device) -> dict:
    """The environment report (see the module docstring)."""
    env: dict = {"python": sys.version.split()[0], "machine": platform.machine(), "torch": torch.__version__,
                 "cuda_runtime": torch.version.cuda, "triton": _version("triton"),
                 "cpu_threads": torch.get_num_threads(), "compile": compile_toolchain()}
    if device.type != "cuda":
        return env
    props = torch.cuda.get_device_properties(device)
    name = torch.cuda.get_device_name(device)
    peak = peak_bf16_flops(name)
    nccl = torch.cuda.nccl.version() if hasattr(torch.cuda, "nccl") else None
    env.update(gpu=name, gpu_count=torch.cuda.device_count(), memory_gib=round(props.total_memory / 2**30, 1),
               compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
               bf16_peak_tflops=None if peak is None else peak / 1e12, cudnn=torch.backends.cudnn.version(),
               nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl, driver=_driver_version(),
               bf16_supported=torch.cuda.is_bf16_supported())
    if peak is None:
        env["bf16_peak_note"] = "unknown GPU name: MFU is not reported (add it to PEAK_BF16_TFLOPS)"
    return env
