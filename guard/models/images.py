"""Reading images for the model: PNG, JPEG, WebP and GIF (first frame), normalised to plain RGB.

Every image goes through the same steps, so what the model sees does not depend on how the file
was saved: EXIF orientation applied, transparency flattened onto white, any colour mode
converted to RGB. Files that are not images, are truncated, or decode to more pixels than
`MAX_PIXELS` (a decompression bomb: a small file that expands to gigabytes) are refused with a
one-line `ImageError` naming the file, before anything is decoded where that is possible.
Nothing here knows models.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from guard.errors import InputError, first_line
from guard.limits import LIMITS, read_regular_file

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".webp", ".gif")
MAX_PIXELS = LIMITS.max_image_pixels  # Pillow's own bomb threshold (about 0.25 GiB as RGBA); 9,459 x 9,459
PIPELINE = "guard-image-1"  # part of each image's hash: bump when the normalisation below changes


class ImageError(InputError):
    """An image file cannot be used; the message starts with the file's name."""


@dataclass(frozen=True)
class GuardImage:
    """A decoded RGB image, the name it was given by, and a hash of its content.

    Two GuardImages are equal when their content hashes are: the hash, not the name, identifies
    an image in activation caches and policy versions.
    """

    sha256: str  # of the file's bytes and PIPELINE
    name: str = field(compare=False)  # as the user or the data file gave it, for messages
    image: object = field(compare=False, repr=False)  # PIL.Image.Image, mode RGB

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size  # (width, height)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(PIPELINE.encode() + b"\0" + data).hexdigest()


def file_hash(path: str | Path) -> str:
    """The hash `load_image` would give this file, without decoding it (for policy versions)."""
    return content_hash(read_image_file(path, str(path)))


def read_image_file(path: str | Path, name: str) -> bytes:
    """An image file's bytes: a regular file (never a device or FIFO) of at most the byte limit."""
    return read_regular_file(path, LIMITS.max_image_bytes, ImageError, name, kind="an image")


def load_image(path: str | Path, name: str | None = None, max_pixels: int | None = None) -> GuardImage:
    """Read one image file; `name` (default: the path as given) is used in error messages."""
    name = name or str(path)
    return decode_image(read_image_file(path, name), name, max_pixels)


def decode_image(data: bytes, name: str, max_pixels: int | None = None) -> GuardImage:
    """Decode image bytes (see the module docstring for what is accepted and what is done)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    max_pixels = max_pixels or LIMITS.max_image_pixels
    if len(data) > LIMITS.max_image_bytes:
        raise ImageError(f"{name}: is {len(data):,} bytes, more than guard reads ({LIMITS.max_image_bytes:,})")
    if not data:
        raise ImageError(f"{name}: is empty (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns above its pixel limit and raises above twice that; guard refuses both.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            # Only the header is read here; the pixels are decoded by load() below.
            img = Image.open(io.BytesIO(data), formats=FORMATS)
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not a PNG, JPEG, WebP or GIF image") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(
                f"{name}: too many pixels (a decompression bomb?); guard reads images up to {max_pixels:,} pixels"
            ) from None
        except Exception as exc:  # a malformed header can raise nearly anything inside a plugin
            raise ImageError(f"{name}: not a readable image ({first_line(exc)})") from None
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageError(f"{name}: has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageError(
                f"{name}: {width}x{height} pixels is more than guard reads ({max_pixels:,} pixels; "
                f"a decompression bomb?)"
            )
        try:
            img.seek(0)  # first frame of an animated GIF or WebP
            img.load()
        except Exception as exc:
            raise ImageError(f"{name}: truncated or corrupt {img.format} image ({first_line(exc)})") from None
    with contextlib.suppress(Exception):  # a broken EXIF block: keep the pixels as stored
        img = ImageOps.exif_transpose(img)
    return GuardImage(sha256=content_hash(data), name=name, image=to_rgb(img))


def to_rgb(img):
    """RGB, with any transparency composited onto white (a transparent pixel shows as white)."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: scale to 8 bits first
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def as_image(value) -> GuardImage:
    """A GuardImage from a GuardImage, a path, or a PIL image (named "<image>")."""
    if isinstance(value, GuardImage):
        return value
    if isinstance(value, (str, Path)):
        return load_image(value)
    from PIL import Image

    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return decode_image(buffer.getvalue(), "<image>")
    raise ImageError(f"{value!r}: not an image path or a PIL image")
