"""The FID Inception-v3: the TensorFlow 2015-12-05 graph ported to PyTorch, in plain torch.

This is the network behind every published FID/IS/KID number since Heusel et al. (2017). The weights
file is pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (also shipped by torch-fidelity as
`weights-inception-2015-12-05-6726825d.pth`, same tensors). Module names follow that state-dict
layout exactly (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`, ..., `fc.weight`
with 1008 classes), so `load_state_dict(strict=True)` accepts the published file.

It differs from torchvision's ImageNet Inception-v3 in the ways pytorch-fid documents
(`FIDInceptionA/C/E_1/E_2`): the average pools inside the A, C and first E blocks exclude the
zero padding (`count_include_pad=False`, as TensorFlow does), the second E block (Mixed_7c) uses
a max pool in its pool branch, there is no auxiliary classifier, and the classifier has 1008
outputs. BatchNorm eps is 1e-3. See `PROTOCOL.md` beside this file for how it is used.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vq3d.errors import UserError
from vq3d.losses.perceptual import read_state_dict

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU; torchvision's `BasicConv2d` (keys .conv, .bn)."""

    def __init__(self, c_in: int, c_out: int, kernel_size, stride: int = 1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: Tensor) -> Tensor:
    """3x3 stride-1 average pool that ignores padded zeros (TensorFlow's behaviour)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 64 + 64 + 96 + pool_features channels out."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(c_in, 64, 1)
        self.branch5x5_1 = ConvBN(c_in, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a): 384 + 96 + c_in channels out."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorized 7x7 convolutions (Mixed_6b..e): 4 x 192 channels out."""

    def __init__(self, c_in: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = ConvBN(c_in, 192, 1)
        self.branch7x7_1 = ConvBN(c_in, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                     self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = conv(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a): 320 + 192 + c_in channels out."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(c_in, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with expanded filter banks (Mixed_7b/c): 320 + 768 + 768 + 192 = 2048 channels out.

    `pool` is "avg" (padding-excluding average) for Mixed_7b and "max" for Mixed_7c: the TF graph
    behind the FID weights has a max pool there (pytorch-fid's FIDInceptionE_2).
    """

    def __init__(self, c_in: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = ConvBN(c_in, 320, 1)
        self.branch3x3_1 = ConvBN(c_in, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class InceptionFeatures(nn.Module):
    """FID Inception-v3 returning pool3 features and classifier logits.

    Input: images (B,3,H,W) in [-1,1] (the project's convention), any H, W. They are (optionally)
    quantized to 8 bits as if saved to PNG, resized bilinearly to 299x299 (align_corners=False, no
    antialiasing, as pytorch-fid does) and fed as-is: the network expects [-1,1], which is what
    pytorch-fid's `2*x - 1` produces from its [0,1] input (resizing commutes with that affine map).

    Output: dict with
      "pool3"           (B,2048) the final average pool; FID and KID use these,
      "logits_unbiased" (B,1008) pool3 @ fc.weight.T without the bias; the Inception Score takes
                        the softmax over all 1008 of them (original TF IS code, torch-fidelity),
      "logits"          (B,1008) fc(pool3) with the bias.
    Call `load_inception(path)` to get one with the published weights; the constructor alone gives
    random weights (for tests).
    """

    def __init__(self, quantize: bool = True) -> None:
        super().__init__()
        self.quantize = quantize
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)  # always inference BatchNorm

    def preprocess(self, images: Tensor) -> Tensor:
        """(B,3,H,W) in [-1,1] -> (B,3,299,299) float32 in [-1,1]."""
        x = images.float().clamp(-1.0, 1.0)
        if self.quantize:
            x = torch.round((x + 1.0) * 127.5) / 127.5 - 1.0
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return x

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = self.preprocess(images)  # (B,3,299,299)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B,64,147,147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B,64,73,73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B,192,71,71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B,192,35,35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (B,288,35,35)
        x = self.Mixed_6a(x)  # (B,768,17,17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (B,768,17,17)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (B,2048,8,8)
        pool3 = x.mean(dim=(2, 3))  # (B,2048)
        logits_unbiased = pool3 @ self.fc.weight.T  # (B,1008)
        return {"pool3": pool3, "logits_unbiased": logits_unbiased, "logits": logits_unbiased + self.fc.bias}


def load_inception(path: str | Path | None, quantize: bool = True) -> InceptionFeatures:
    """Build the FID Inception and load the published weights (.pth state dict or .safetensors).

    Raises UserError when the file is missing or does not have the published layout.
    """
    if not path or not Path(path).is_file():
        where = f" (not found: {path})" if path else ""
        raise UserError(f"FID needs the Inception weights file {WEIGHTS_NAME}; pass --inception PATH{where}")
    model = InceptionFeatures(quantize=quantize)
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise UserError(f"{path} is not the FID Inception weights file {WEIGHTS_NAME}: {detail}") from None
    return model.eval()
