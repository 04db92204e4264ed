"""FID Inception-v3: published state-dict layout, strict loading, FID-specific pooling, I/O errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vq3d.errors import UserError
from vq3d.eval.inception import InceptionA, InceptionE, InceptionFeatures, load_inception

# A handful of keys and shapes of pytorch-fid's pt_inception-2015-12-05-6726825d.pth, written out
# from its layout (torchvision Inception3 names, no AuxLogits, 1008-way fc, bias-free convs).
PUBLISHED_KEYS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_mean": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.bn.running_var": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def random_state() -> dict[str, torch.Tensor]:
    """A state dict in the published layout with non-default BN statistics (so loading is observable)."""
    torch.manual_seed(0)
    state = InceptionFeatures().state_dict()
    for key, value in state.items():
        if key.endswith("conv.weight"):  # variance-preserving, so features depend on the input
            state[key] = torch.nn.init.kaiming_normal_(torch.empty_like(value))
        elif key.endswith("running_mean"):
            state[key] = torch.randn_like(value) * 0.1
        elif key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5
    return state


@pytest.fixture(scope="module")
def pth_file(tmp_path_factory, random_state):
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_state, path)
    return path


def test_state_dict_has_published_keys_and_shapes() -> None:
    state = InceptionFeatures().state_dict()
    for key, shape in PUBLISHED_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in state)
    assert not any(k.endswith("conv.bias") for k in state)


def test_parameter_count_is_torchvision_inception_minus_aux_with_1008_classes() -> None:
    # torchvision inception_v3: 27,161,264 parameters (1000 classes, with AuxLogits).
    # AuxLogits: conv0 768*128 + bn 2*128, conv1 128*768*25 + bn 2*768, fc 768*1000 + 1000.
    aux = 768 * 128 + 256 + 128 * 768 * 25 + 1536 + 768 * 1000 + 1000
    expected = 27_161_264 - aux + 8 * 2048 + 8  # 8 extra classes in the FID graph
    assert sum(p.numel() for p in InceptionFeatures().parameters()) == expected


def test_bn_eps_is_tensorflow_default() -> None:
    assert InceptionFeatures().Mixed_6c.branch7x7_1.bn.eps == pytest.approx(1e-3)


def test_loads_pth_strictly_with_weights_only(pth_file, random_state, monkeypatch) -> None:
    seen = {}
    real_load = torch.load

    def spy_load(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_load)
    model = load_inception(pth_file)
    assert seen.get("weights_only") is True
    got = model.state_dict()
    for key in PUBLISHED_KEYS:
        torch.testing.assert_close(got[key], random_state[key])
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_loads_safetensors_and_files_without_num_batches_tracked(tmp_path, random_state) -> None:
    from safetensors.torch import save_file

    trimmed = {k: v for k, v in random_state.items() if not k.endswith("num_batches_tracked")}
    save_file(trimmed, str(tmp_path / "w.safetensors"))
    model = load_inception(tmp_path / "w.safetensors")
    key = "Mixed_7c.branch_pool.bn.running_var"
    torch.testing.assert_close(model.state_dict()[key], random_state[key])


def test_features_and_logits(pth_file, random_state, monkeypatch) -> None:
    model = load_inception(pth_file)
    # The net is fully convolutional up to pool3; a 139x139 resize (not 299) keeps this test fast on
    # CPU. The 299 resize itself is tested in test_preprocess_matches_pytorch_fid_convention.
    monkeypatch.setattr("vq3d.eval.inception.INPUT_SIZE", 139)
    images = torch.rand(2, 3, 40, 48) * 2 - 1
    out = model(images)
    assert out["pool3"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert torch.isfinite(out["pool3"]).all() and (out["pool3"] >= 0).all()  # mean of ReLU outputs
    unbiased = out["pool3"] @ random_state["fc.weight"].T
    torch.testing.assert_close(out["logits_unbiased"], unbiased)
    torch.testing.assert_close(out["logits"], unbiased + random_state["fc.bias"])
    assert not torch.allclose(out["pool3"][0], out["pool3"][1])


def test_preprocess_matches_pytorch_fid_convention() -> None:
    """[-1,1] input resized == pytorch-fid's [0,1] input resized then mapped by 2x - 1."""
    u = torch.randint(0, 256, (1, 3, 20, 30)).float() / 255
    ours = InceptionFeatures().preprocess(u * 2 - 1)
    ref = F.interpolate(u, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    assert ours.shape == (1, 3, 299, 299)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_preprocess_quantizes_to_8_bits() -> None:
    x = torch.full((1, 3, 299, 299), 0.3)
    q = InceptionFeatures(quantize=True).preprocess(x)
    assert torch.allclose(q, torch.full_like(x, round(1.3 * 127.5) / 127.5 - 1))
    assert torch.allclose(InceptionFeatures(quantize=False).preprocess(x), x)


def test_average_pools_exclude_padding() -> None:
    """On a constant input, a TF-style pool keeps border values equal to the interior."""
    block = InceptionA(4, pool_features=2).eval()
    out = block(torch.ones(1, 4, 7, 7))
    pool_branch = out[:, -2:]
    assert torch.allclose(pool_branch, pool_branch[..., 3:4, 3:4].expand_as(pool_branch))


def test_second_e_block_max_pools_first_average_pools() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 6, 5, 5)
    for pool, pooled in (
        ("max", F.max_pool2d(x, 3, stride=1, padding=1)),
        ("avg", F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)),
    ):
        block = InceptionE(6, pool=pool).eval()
        expected = block.branch_pool(pooled)
        torch.testing.assert_close(block(x)[:, -192:], expected)


def test_missing_weights_raise_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="pt_inception-2015-12-05-6726825d.pth; pass --inception PATH"):
        load_inception(tmp_path / "nope.pth")
    with pytest.raises(UserError, match="--inception"):
        load_inception("")


def test_wrong_layout_raises_user_error(tmp_path) -> None:
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not the FID Inception weights"):
        load_inception(tmp_path / "other.pth")
