"""Image decoding (formats, EXIF orientation, limits) and resizing with the way back for boxes."""

import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from edge_vision import ImageLimits, ImageTooLarge, InvalidImage, VisionError
from edge_vision.preprocess import letterbox, open_image, stretch
from PIL import Image

LIMITS = ImageLimits()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height`, with almost no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("size", "box"),
    [
        ((1280, 720), (100, 50, 400, 300)),  # wide: padded top and bottom
        ((480, 640), (10, 400, 470, 630)),  # tall: padded left and right
        ((300, 300), (0, 0, 150, 150)),  # square
        ((101, 37), (20, 5, 90, 30)),  # small, odd sizes: upscaled, uneven padding
    ],
)
def test_letterbox_round_trip(size: tuple[int, int], box: tuple[int, int, int, int]) -> None:
    """A white rectangle letterboxed to 640x640 maps back onto itself (within a source pixel)."""
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((255, 255, 255), box)
    pixels, placement = letterbox(image, (640, 640), resample="nearest", pad_value=114)
    assert pixels.shape == (640, 640, 3)
    assert pixels.dtype == np.uint8
    # the padding is grey 114, the image area is not
    content = np.argwhere((pixels != 114).any(axis=2))
    (top, left), (bottom, right) = content.min(axis=0), content.max(axis=0) + 1
    assert (left, top) == (placement.pad_x, placement.pad_y)
    assert right - left == round(size[0] * placement.scale_x)
    assert bottom - top == round(size[1] * placement.scale_y)
    white = np.argwhere((pixels == 255).all(axis=2))
    (y0, x0), (y1, x1) = white.min(axis=0), white.max(axis=0) + 1
    back = placement.to_original(np.array([[x0, y0, x1, y1]], dtype=np.float32), *size)[0]
    tolerance = max(1.0, 1 / placement.scale_x)
    assert back == pytest.approx(box, abs=tolerance)


def test_stretch_maps_back_and_clips() -> None:
    """Plain resize scales each axis on its own; boxes past the input's edge are clipped."""
    pixels, placement = stretch(Image.new("RGB", (600, 400)), (300, 300))
    assert pixels.shape == (300, 300, 3)
    boxes = np.array([[150, 75, 300, 150], [-5, -5, 310, 320]], dtype=np.float32)
    assert placement.to_original(boxes, 600, 400).tolist() == [
        [300, 100, 600, 200],
        [0, 0, 600, 400],
    ]


@pytest.mark.parametrize(
    ("orientation", "size", "top_left_colour"),
    [
        (1, (64, 32), (255, 0, 0)),  # as stored: red on the left
        (3, (64, 32), (0, 0, 255)),  # upside down: blue comes to the left
        (6, (32, 64), (255, 0, 0)),  # turned 90 degrees clockwise: red on top
        (8, (32, 64), (0, 0, 255)),  # turned 90 degrees anticlockwise: blue on top
    ],
)
def test_exif_orientation_applied(
    encode: Callable[..., bytes],
    orientation: int,
    size: tuple[int, int],
    top_left_colour: tuple[int, int, int],
) -> None:
    """The decoded image is what a viewer shows: EXIF orientation applied, RGB."""
    stored = Image.new("RGB", (64, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = open_image(encode(stored, "JPEG", quality=95, exif=exif), LIMITS)
    assert image.mode == "RGB"
    assert image.size == size
    assert np.abs(np.asarray(image)[2, 2].astype(int) - top_left_colour).max() < 40


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_other_modes_become_rgb(encode: Callable[..., bytes], mode: str) -> None:
    """Greyscale, alpha, palette, CMYK, 16-bit inputs all come out as 3-channel RGB."""
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    image = open_image(encode(Image.new(mode, (20, 10)), fmt), LIMITS)
    assert (image.mode, image.size) == ("RGB", (20, 10))


@pytest.mark.parametrize(
    ("case", "error", "code"),
    [
        ("text", InvalidImage, "invalid_image"),
        ("empty", InvalidImage, "invalid_image"),
        ("truncated png", InvalidImage, "invalid_image"),
        ("truncated jpeg", InvalidImage, "invalid_image"),
        ("tiff", InvalidImage, "invalid_image"),
        ("bomb past Pillow's limit", ImageTooLarge, "image_too_large"),
        ("bomb past ours only", ImageTooLarge, "image_too_large"),
        ("too many bytes", ImageTooLarge, "image_too_large"),
    ],
)
def test_bad_images_are_refused(
    photo: Callable[[str], bytes],
    encode: Callable[..., bytes],
    case: str,
    error: type[VisionError],
    code: str,
) -> None:
    """Hostile or broken input raises a client error carrying its OpenAI-style code."""
    limits = LIMITS
    match case:
        case "text":
            data = b"GET / HTTP/1.1\r\n\r\n"
        case "empty":
            data = b""
        case "truncated png":
            data = photo("chelsea")[:20_000]
        case "truncated jpeg":
            data = photo("grace_hopper")[:20_000]
        case "tiff":  # a real image, in a format we do not parse
            data = encode(Image.new("RGB", (8, 8)), "TIFF")
        case "bomb past Pillow's limit":  # 40000 x 40000 = 1.6 G pixels, a few bytes on the wire
            data = png_header(40_000, 40_000)
        case "bomb past ours only":  # 64 M pixels: under Pillow's 89 M, over our 40 M
            data = png_header(8_000, 8_000)
        case _:
            data = photo("chelsea")
            limits = ImageLimits(max_bytes=len(data) - 1)
    with pytest.raises(error) as caught:
        open_image(data, limits)
    assert caught.value.code == code
    assert caught.value.type == "invalid_request_error"
