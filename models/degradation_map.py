"""SRMD's degradation maps: the input channels that tell the network what to undo.

SRMD (Zhang et al., CVPR 2018) takes, beside the RGB picture, 15 channels holding the
PCA code of the blur kernel and one holding the noise σ / 255, each constant over the
frame here.  One network thus covers every noise level: the caller says how strong the
noise (or compression) is, instead of choosing among fixed-strength models as with
waifu2x's noise 0–3.  The kernel code is srmd-ncnn-vulkan's (``srmd_preproc.comp``):
the bicubic downscale the ×2/×3/×4 weights were trained with.

:class:`DegradationMapped` puts the maps behind a 3-channel interface, so tiling,
``torch.compile``, the ncnn runner, ONNX export and TensorRT see an ordinary
RGB-in, RGB-out network.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["BICUBIC_KERNEL_CODE", "MAX_NOISE_SIGMA", "DegradationMapped", "degradation_channels"]

BICUBIC_KERNEL_CODE: tuple[float, ...] = (
    -1.12360956e-08,
    -1.36899159e-08,
    1.85637958e-02,
    2.86066886e-08,
    3.35292965e-02,
    8.37272935e-08,
    -2.54424009e-07,
    -3.16234976e-02,
    -1.35169253e-02,
    -1.10466090e-08,
    3.84753793e-02,
    3.79465739e-08,
    -2.44916752e-01,
    -8.02213490e-01,
    -5.40549755e-01,
)
# The highest noise level SRMD was trained on (σ 0–75 in 8-bit levels).
MAX_NOISE_SIGMA = 75.0


def degradation_channels(noise_sigma: float) -> tuple[float, ...]:
    """The 16 constant channels for a bicubic downscale with Gaussian noise of
    ``noise_sigma`` (8-bit levels)."""
    if not 0 <= noise_sigma <= MAX_NOISE_SIGMA:
        raise ValueError(f"noise_sigma must be 0–{MAX_NOISE_SIGMA:g}, got {noise_sigma}")
    return (*BICUBIC_KERNEL_CODE, noise_sigma / 255.0)


class DegradationMapped(nn.Module):
    """``net`` (a module or the ncnn runner) fed RGB plus constant ``channels``."""

    net: Callable[[torch.Tensor], torch.Tensor]
    channels: torch.Tensor

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], channels: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("channels", torch.tensor(channels).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        maps = self.channels.to(x.device, x.dtype).expand(n, -1, h, w)
        full = torch.cat([x, maps], dim=1)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # cat returns the default layout; the net's weights are channels_last on CUDA.
            full = full.contiguous(memory_format=torch.channels_last)
        return self.net(full)
