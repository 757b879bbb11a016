"""Reading images: the four formats, orientation, transparency, and a one-line refusal for each bad file."""

import io
import struct
import zlib

import pytest
from PIL import Image

from guard.models.images import MAX_PIXELS, GuardImage, ImageError, as_image, decode_image, file_hash, load_image


def save(img, path, **kwargs):
    img.save(path, **kwargs)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny compressed row: a decompression
    bomb's shape (a few dozen bytes on disk, gigabytes once decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("GIF", "gif")])
def test_the_four_formats_load_as_rgb(tmp_path, fmt, suffix):
    path = save(Image.new("RGB", (30, 20), (200, 30, 30)), tmp_path / f"red.{suffix}", format=fmt)
    image = load_image(path)
    assert image.image.mode == "RGB" and image.size == (30, 20)
    r, g, b = image.image.getpixel((15, 10))
    assert r > 150 and g < 80 and b < 80  # lossy formats are close, not exact
    assert image.name == str(path)


def test_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    assert load_image(path).image.getpixel((8, 8)) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white stripe on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(img, tmp_path / "rotated.jpg", format="JPEG", exif=exif.tobytes(), quality=95)
    shown = load_image(path).image
    assert shown.size == (20, 40)  # displayed upright: portrait
    assert shown.getpixel((10, 3))[0] > 200  # the stripe is now along the top
    assert shown.getpixel((10, 36))[0] < 60


def test_transparency_is_flattened_onto_white(tmp_path):
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    img.paste((0, 0, 255, 255), (0, 0, 5, 10))  # opaque blue left half
    path = save(img, tmp_path / "alpha.png", format="PNG")
    flat = load_image(path).image
    assert flat.mode == "RGB"
    assert flat.getpixel((8, 5)) == (255, 255, 255)
    assert flat.getpixel((2, 5)) == (0, 0, 255)
    half = Image.new("LA", (4, 4), (0, 128))  # black at half opacity -> mid grey
    assert load_image(save(half, tmp_path / "la.png", format="PNG")).image.getpixel((1, 1))[0] in range(125, 130)
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.info["transparency"] = 0
    assert load_image(save(palette, tmp_path / "p.gif", format="GIF", transparency=0)).image.getpixel((0, 0)) == (
        255,
        255,
        255,
    )


def test_other_modes_become_rgb(tmp_path):
    grey16 = Image.new("I;16", (4, 4), 65535)
    assert load_image(save(grey16, tmp_path / "g16.png", format="PNG")).image.getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # red
    assert load_image(save(cmyk, tmp_path / "cmyk.jpg", format="JPEG")).image.getpixel((0, 0))[0] > 200


def test_hash_is_content_not_name(tmp_path):
    a = save(Image.new("RGB", (8, 8), "red"), tmp_path / "a.png", format="PNG")
    b = tmp_path / "copy-of-a.png"
    b.write_bytes(a.read_bytes())
    c = save(Image.new("RGB", (8, 8), "blue"), tmp_path / "c.png", format="PNG")
    assert load_image(a) == load_image(b) and load_image(a).sha256 == file_hash(b)
    assert load_image(a) != load_image(c)
    assert len({load_image(a), load_image(b), load_image(c)}) == 2


# --- refusals: one line, naming the file ---------------------------------------------------------


def refusal(path) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def test_zero_bytes(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert refusal(path) == f"{path}: is empty (0 bytes)"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(tmp_path, fmt):
    buffer = io.BytesIO()
    noise = Image.effect_noise((64, 64), 80).convert("RGB")  # noise compresses badly: many bytes to cut
    noise.save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in refusal(path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image, only words\n" * 20)
    assert refusal(path) == f"{path}: not a PNG, JPEG, WebP or GIF image"


def test_huge_dimensions_are_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(100_000, 100_000))  # 10 gigapixels in 80 bytes
    assert path.stat().st_size < 100
    message = refusal(path)
    assert "decompression bomb" in message


def test_over_guards_limit_but_under_pillows_hard_limit(tmp_path):
    side = int((MAX_PIXELS * 1.5) ** 0.5)  # between Pillow's warning and its error
    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(side, side))
    assert "decompression bomb" in refusal(path)
    small = tmp_path / "small.png"
    small.write_bytes(png_header_only(4000, 3000))  # 12 MP header, but its pixel data is missing
    assert "truncated or corrupt" in refusal(small)  # so it gets past the size check to decoding


def test_lower_limit_and_other_formats(tmp_path):
    path = save(Image.new("RGB", (100, 100)), tmp_path / "p.png", format="PNG")
    with pytest.raises(ImageError, match="100x100 pixels is more than guard reads"):
        load_image(path, max_pixels=5000)
    bmp = save(Image.new("RGB", (4, 4)), tmp_path / "x.bmp", format="BMP")
    assert refusal(bmp) == f"{bmp}: not a PNG, JPEG, WebP or GIF image"
    assert refusal(tmp_path / "missing.png") == f"{tmp_path / 'missing.png'}: no such file"
    assert refusal(tmp_path) == f"{tmp_path}: is a directory, not an image"


def test_as_image_accepts_paths_pil_images_and_guard_images(tmp_path):
    path = save(Image.new("RGB", (8, 8), "red"), tmp_path / "a.png", format="PNG")
    loaded = as_image(path)
    assert isinstance(loaded, GuardImage) and as_image(loaded) is loaded
    from_pil = as_image(Image.new("RGBA", (8, 8), (0, 0, 0, 0)))
    assert from_pil.image.getpixel((0, 0)) == (255, 255, 255) and from_pil.name == "<image>"
    with pytest.raises(ImageError, match="not an image path"):
        as_image(42)
    assert decode_image(path.read_bytes(), "bytes") == loaded
