"""How hard was the input compressed?  The encoder's own quantiser, read from the stream.

Noise estimators read heavily compressed video as *clean*: quantisation removes the
grain along with the detail (fidelity clips at CRF 36 read σ 0.04–1.1, their CRF 18
copies 0.27–1.8), so compression needs its own measure.  The quantiser the encoder chose
is that measure, and it costs nothing to read: FFmpeg's decoders export it per block
(``export_side_data=venc_params``) while decoding the frames the noise probe decodes
anyway.  Bits per pixel was the alternative; it moves with content (a static clean clip
needs few bits), and on our clips it did not separate the classes (bikes' original
0.093 bits per pixel, a CRF 36 carphone copy 0.066).

Scales differ by codec, so each is converted to H.264's QP (0–51, +6 doubles the step):

* H.264: the per-macroblock QP as it is, less 6 per bit above 8: FFmpeg exports the
  high-bit-depth QP′ (a 10-bit stream's QP 42 is the step of an 8-bit stream's 30).
* MPEG-2 and MPEG-4 part 2 (DVD, DV-era archives): FFmpeg exports twice the quantiser
  scale ``q``; H.264's equivalent is libavcodec's own ``12 + 6·log2(q / 0.85)``.
* Other codecs export nothing comparable (HEVC and AV1 nothing; VP9 a frame-level
  index on its own scale): ``None``, and planning falls back on the noise measure alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import av
import numpy as np
from av.sidedata.encparams import VideoEncParams, VideoEncParamsType

__all__ = ["COMPRESSED_QP", "enable_quantiser_export", "frame_quantiser", "quantiser_step"]

# From this mean QP on, planning treats the input as compressed and upscales with the
# denoising model.  Measured with the operators alone (30 frames, half-size copies at
# x264 CRF 24–37, ×2 against the originals), waifu2x noise 3 led SPAN at every QP from
# 28.9 on (carphone +0.05 to +0.47 dB, bikes +0.31 to +0.51, Big Buck Bunny +0.17 to
# +0.26), while below it the lead changed sides (Big Buck Bunny at 27.2: SPAN +0.10;
# bikes at 25.2: waifu2x +0.30) and the CRF 18 copies (QP 18.7–24.8) are SPAN's.
COMPRESSED_QP = 28.0


def quantiser_step(qp: float) -> float:
    """H.264's quantiser step size at ``qp`` (0.625 at QP 0, doubling every 6): the
    spacing of the levels the encoder rounded its coefficients to."""
    return 0.625 * 2.0 ** (qp / 6.0)


def enable_quantiser_export(stream: av.video.stream.VideoStream) -> None:
    """Ask ``stream``'s decoder to attach its quantisers to each frame (before decoding)."""
    stream.codec_context.options = {
        **stream.codec_context.options,
        "export_side_data": "venc_params",
    }


def frame_quantiser(frame: av.VideoFrame) -> float | None:
    """The mean quantiser of ``frame``'s blocks on H.264's QP scale, or ``None`` where
    its decoder exported none this module can convert."""
    for data in cast("Iterable[object]", frame.side_data):
        if not isinstance(data, VideoEncParams):
            continue
        kind = data.codec_type
        # VP9 exports a frame-level index on its own scale and no blocks unless it
        # segments: nothing to convert.
        if kind not in (VideoEncParamsType.H264, VideoEncParamsType.MPEG2) or not data.nb_blocks:
            return None
        qps = _block_qps(data)
        if kind == VideoEncParamsType.H264:
            bits = frame.format.components[0].bits
            return float(qps.mean()) - 6.0 * max(0, bits - 8)
        # MPEG-2 (and MPEG-4 part 2, which reports the same type): twice the scale.
        scale = np.maximum(qps / 2.0, 1.0)
        return float(np.mean(12.0 + 6.0 * np.log2(scale / 0.85)))
    return None


def _block_qps(data: VideoEncParams) -> np.ndarray:
    try:
        return np.asarray(data.qp_map(), dtype=np.float64)
    except (RuntimeError, ValueError):
        # PyAV's map needs one block per 16×16 of the *cropped* frame; a stream that
        # crops 16 px or more (H.264's frame cropping) has more blocks than that.
        return np.array(
            [data.qp + data.block_params(i).delta_qp for i in range(data.nb_blocks)],
            dtype=np.float64,
        )
