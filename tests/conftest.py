"""Every test starts from the same random state, so a result never depends on the order or the
worker that pytest-xdist gives it (random inputs drawn without a seed once made a test flaky).
Shared fixtures: one torch thread for a module, a tiny random DPT, and a headless chromium for
the pages' browser tests."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_every_test():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and several threads crawl on a busy machine); a
    module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dpt(tmp_path_factory):
    """A tiny random DPT depth model saved the way `transformers` saves one (nothing downloaded)."""
    from transformers import DPTConfig, DPTForDepthEstimation
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    folder = tmp_path_factory.mktemp("tiny-dpt")
    torch.manual_seed(0)
    config = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                       image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8, head_hidden_size=8,
                       reassemble_factors=[4, 2, 1, 0.5])
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


# Triton's kernels run in its interpreter where there is no GPU (it must be set before Triton is
# imported; vq3d imports the kernels only when a render asks for them): tests/test_render_triton.py
if not __import__("torch").cuda.is_available():
    import os

    os.environ.setdefault("TRITON_INTERPRET", "1")


CHROMIUM = "/usr/bin/chromium"  # Debian's; `playwright install` would download a browser


@pytest.fixture(scope="module")
def browser():
    """A headless chromium through Playwright; the test skips, saying why, when either is absent."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser tests need the playwright package (pip install playwright; "
                    "never run `playwright install`: the tests use /usr/bin/chromium)")
    with sync_playwright() as pw:
        # --disable-dev-shm-usage: containers often have a tiny /dev/shm, where tabs crash or stall
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, timeout=60_000,
                                      args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()
