"""Every test starts from the same random state, so a result never depends on the order or the
worker that pytest-xdist gives it (random inputs drawn without a seed once made a test flaky)."""

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_every_test():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
