"""Image decoding with bad-input detection: RGB conversion and a decompression-bomb guard."""
from __future__ import annotations

import io
import math
import os
import warnings
from fractions import Fraction
from typing import List, Optional, Sequence, Tuple, Union

from PIL import Image, UnidentifiedImageError

from .errors import BadImage

__all__ = ["load_image", "DEFAULT_MAX_IMAGE_PIXELS", "DECODE_MODES", "DRAFT_REDUCING_GAP", "draft_request"]

# PIL's own default warning threshold (about 89.5 Mpx, e.g. 9459 x 9459); above it an image
# is treated as a decompression bomb and skipped rather than decoded into gigabytes of RAM.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
_WHITE = (255, 255, 255)
DECODE_MODES = ("exact", "draft")
# data.decode=draft: JPEG DCT-domain reduction never goes below this many times the size the
# model's resize produces, so the bicubic resize after it still reduces by at least this factor.
DRAFT_REDUCING_GAP = 2.0


def draft_request(width: int, height: int, size: Union[int, Sequence[int]], resize_mode: str = "shortest",
                  reducing_gap: float = DRAFT_REDUCING_GAP) -> Tuple[int, int]:
    """The smallest ``(width, height)`` a JPEG of ``width x height`` may be reduced to in DCT
    space (``Image.draft``) before the model's resize to ``size``: ``reducing_gap`` times the
    resize's output (the shorter side for open_clip's ``shortest`` mode, the longer for
    ``longest``, each side for ``squash``)."""
    sizes = [int(size)] * 2 if isinstance(size, (int, float)) else [int(v) for v in size]
    if len(sizes) == 1:
        sizes *= 2
    if resize_mode == "squash":
        return math.ceil(sizes[1] * reducing_gap), math.ceil(sizes[0] * reducing_gap)
    side = min(width, height) if resize_mode == "shortest" else max(width, height)
    factor = Fraction(reducing_gap).limit_denominator(1000) * max(sizes) / side  # exact: no 448.0000001
    return math.ceil(width * factor), math.ceil(height * factor)


def _to_rgb(img: Image.Image, repairs: Optional[List[str]]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        kind = "converted_palette"
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode == "RGB":
            if repairs is not None:
                repairs.append(kind)
            return img
    elif mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        kind = "converted_alpha"
        img = img.convert("RGBA")
    elif mode == "CMYK":
        kind = "converted_cmyk"
    elif mode in ("L", "1", "I", "F") or mode.startswith("I;"):
        kind = "converted_grayscale"
    else:  # YCbCr, LAB, HSV, RGBX ...
        kind = "converted_other"
    if img.mode == "RGBA":
        # Composite on white: transparent pixels would otherwise keep arbitrary colour values.
        background = Image.new("RGB", img.size, _WHITE)
        background.paste(img, mask=img.getchannel("A"))
        img = background
    elif mode.startswith("I") or mode == "F":
        # 16/32-bit grayscale: scale into 8 bits before the RGB conversion, which would clip.
        import numpy as np
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype("uint8"), "L").convert("RGB")
    else:
        img = img.convert("RGB")
    if repairs is not None:
        repairs.append(kind)
    return img


def load_image(source: Union[str, os.PathLike, bytes], *, name: Optional[str] = None,
               max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, repairs: Optional[List[str]] = None,
               draft: Optional[Tuple[Union[int, Sequence[int]], str]] = None) -> Image.Image:
    """Decode an image file (a path, or the bytes of one with ``name`` for messages) to RGB.

    Raises ``BadImage(kind, path, detail)`` with ``kind`` in ``missing_file``, ``empty_file``,
    ``not_an_image``, ``truncated_image``, ``decompression_bomb``. Grayscale, CMYK, palette,
    alpha and other modes (YCbCr, LAB...) are converted to RGB (alpha composited on white);
    each conversion appends its kind (``converted_*``) to ``repairs`` when a list is given.

    ``draft=(size, resize_mode)`` (``data.decode: draft``) lets a JPEG decode at 1/2, 1/4 or 1/8
    scale in DCT space, never below ``DRAFT_REDUCING_GAP`` times what a resize to ``size`` in
    that mode produces: faster for large photos, close to but not bit-equal with the exact decode.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        where = name or "<bytes>"
        data = bytes(source)
        if not data:
            raise BadImage("empty_file", where, "0 bytes")
        fp = io.BytesIO(data)
    else:
        where = name or os.fspath(source)
        try:
            size = os.stat(source).st_size
        except FileNotFoundError:
            raise BadImage("missing_file", where, "no such file") from None
        except OSError as e:
            raise BadImage("missing_file", where, str(e)) from None
        if size == 0:
            raise BadImage("empty_file", where, "0 bytes")
        fp = source
    with warnings.catch_warnings():
        # Our own pixel limit replaces PIL's global one, so silence its warning here.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(fp)
        except Image.DecompressionBombError as e:
            raise BadImage("decompression_bomb", where, str(e)) from None
        except UnidentifiedImageError:
            raise BadImage("not_an_image", where, "PIL cannot identify the image format") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise BadImage("not_an_image", where, str(e)) from None
        width, height = img.size
        if width * height > max_pixels:
            raise BadImage("decompression_bomb", where,
                           f"{width}x{height} = {width * height} pixels > data.max_image_pixels={max_pixels}")
        if draft is not None and img.format == "JPEG":
            img.draft(None, draft_request(width, height, draft[0], draft[1]))
        try:
            img.load()
        except Image.DecompressionBombError as e:
            raise BadImage("decompression_bomb", where, str(e)) from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise BadImage("truncated_image", where, str(e)) from None
    return _to_rgb(img, repairs)
