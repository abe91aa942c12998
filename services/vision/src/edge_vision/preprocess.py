"""Image bytes -> oriented RGB image -> the model's input pixels, and the way back for boxes.

Images are hostile: the byte size is checked before parsing, the pixel count from the header
before any pixel is decoded (Pillow's own `MAX_IMAGE_PIXELS` bomb check runs first, ours is
tighter), and only a few common formats are parsed at all.
"""

import io
from typing import Annotated, Literal

import msgspec
import numpy as np
from msgspec import Meta
from PIL import Image, ImageOps, UnidentifiedImageError

from edge_vision.errors import ImageTooLarge, InvalidImage

ResizeMode = Literal["stretch", "letterbox"]
Resample = Literal["nearest", "bilinear", "bicubic"]

# TIFF, PSD, EPS and friends stay out: more codecs, more attack surface, no camera sends them.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")  # JPEG covers MPO (phone photos)
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


class ImageLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What an input image may weigh, encoded and decoded."""

    max_bytes: Annotated[int, Meta(gt=0)] = 20 * 1024 * 1024
    """Encoded size."""
    max_pixels: Annotated[int, Meta(gt=0)] = 40_000_000
    """Width x height (a 12 MP phone photo is well inside; a 3 GB RGB buffer is not)."""


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    """Where the original image sits in the model input: `input = original * scale + pad`."""

    scale_x: float
    scale_y: float
    pad_x: float = 0.0
    pad_y: float = 0.0

    def to_original(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        """(N, 4) x0, y0, x1, y1 boxes in input pixels -> original pixels, clipped to the image."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, 0::2] = (boxes[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (boxes[:, 1::2] - self.pad_y) / self.scale_y
        np.clip(out[:, 0::2], 0, width, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, height, out=out[:, 1::2])
        return out


def open_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Decode `data` to an RGB image, EXIF orientation applied (what a viewer shows)."""
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes, over the {limits.max_bytes} limit")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image refused as a decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"not a supported image ({', '.join(FORMATS)})") from exc
    with image:
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ImageTooLarge(
                f"image is {width}x{height} pixels, over the {limits.max_pixels} pixel limit"
            )
        try:
            image.load()
            oriented = ImageOps.exif_transpose(image)
            return oriented.convert("RGB")
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            # truncated data, corrupt chunks, modes Pillow cannot turn into RGB
            raise InvalidImage(f"image could not be decoded: {exc}") from exc


def stretch(
    image: Image.Image, size: tuple[int, int], resample: Resample = "bicubic"
) -> tuple[np.ndarray, Placement]:
    """Plain resize to `size` (width, height); the aspect ratio is not kept."""
    width, height = image.size
    resized = image.resize(size, _RESAMPLE[resample])
    return np.asarray(resized), Placement(scale_x=size[0] / width, scale_y=size[1] / height)


def letterbox(
    image: Image.Image,
    size: tuple[int, int],
    resample: Resample = "bilinear",
    pad_value: int = 114,
) -> tuple[np.ndarray, Placement]:
    """Resize keeping the aspect ratio, centred on a `pad_value` canvas of `size`.

    The rounding is ultralytics' (`LetterBox`, `scale_boxes`), so boxes map back as theirs do.
    """
    width, height = image.size
    gain = min(size[0] / width, size[1] / height)
    new_w, new_h = round(width * gain), round(height * gain)
    left = round((size[0] - new_w) / 2 - 0.1)
    top = round((size[1] - new_h) / 2 - 0.1)
    canvas = np.full((size[1], size[0], 3), pad_value, dtype=np.uint8)
    resized = image
    if (new_w, new_h) != (width, height):
        resized = image.resize((new_w, new_h), _RESAMPLE[resample])
    canvas[top : top + new_h, left : left + new_w] = np.asarray(resized)
    return canvas, Placement(scale_x=gain, scale_y=gain, pad_x=left, pad_y=top)


def fit(
    image: Image.Image,
    size: tuple[int, int],
    mode: ResizeMode,
    resample: Resample,
    pad_value: int = 114,
) -> tuple[np.ndarray, Placement]:
    """The model's input (HWC uint8 RGB of `size`) by its resize `mode`."""
    if mode == "letterbox":
        return letterbox(image, size, resample, pad_value)
    return stretch(image, size, resample)
