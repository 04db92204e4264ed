"""`vq3d demo` / `make demo`: from nothing to a complete, honest result page on a CPU.

    from vq3d.demo import run_demo
    summary = run_demo("runs/demo", minutes=14)   # -> runs/demo/index.html

Modules: `run.py` (the phases and `run_demo`), `plan.py` (measured unit costs -> time budget per
training stage), `progress.py` (the phase/ETA display), `state.py` (folder layout and the markers
that make a rerun skip finished phases), `heldout.py` (held-out scenes against ground truth),
`optional.py` (evaluation phases run when their modules are present). The page itself is built by
`vq3d.report`.
"""

from vq3d.demo.run import run_demo

__all__ = ["run_demo"]
