import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from exporter.errors import ImageError
from exporter.images import MAX_PIXELS, iter_batches, list_images, load_image
from exporter.preprocessing import Preprocessing

RGB = Preprocessing((16, 16))


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_grayscale_is_repeated_to_rgb(tmp_path):
    p = _save(Image.new("L", (20, 20), 77), tmp_path / "g.png")
    assert (load_image(p, RGB) == 77).all()


def test_alpha_is_composited_over_white(tmp_path):
    img = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    img.putpixel((0, 0), (10, 20, 30, 255))
    x = load_image(_save(img, tmp_path / "a.png"), Preprocessing((16, 16), interpolation="nearest"))
    assert tuple(x[0, 0]) == (10, 20, 30) and tuple(x[5, 5]) == (255, 255, 255)


def test_palette_cmyk_and_16_bit(tmp_path):
    pal = Image.new("RGB", (16, 16), (200, 10, 10)).convert("P")
    expected = pal.convert("RGB").getpixel((3, 3))  # the palette's nearest colour, not the original
    assert tuple(load_image(_save(pal, tmp_path / "p.png"), RGB)[3, 3]) == expected
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    assert tuple(load_image(_save(cmyk, tmp_path / "c.jpg", quality=100), RGB)[3, 3])[0] > 240
    deep = Image.fromarray(np.full((16, 16), 65535, np.uint16))
    assert (load_image(_save(deep, tmp_path / "d.png"), RGB) == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (32, 16), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 16, 16))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    p = tmp_path / "r.jpg"
    img.save(p, exif=exif, quality=100)
    x = load_image(p, Preprocessing((32, 16), interpolation="nearest"))  # displayed: 16 wide, 32 tall
    assert x.shape == (32, 16, 3)
    assert x[2, 8].mean() > 200 and x[30, 8].mean() < 50  # the white half is now on top


def test_center_crop_keeps_aspect(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the far left is cropped away
    x = load_image(_save(img, tmp_path / "w.png"), Preprocessing((16, 16), resize="center_crop"))
    assert x[..., 0].max() < 30
    y = load_image(tmp_path / "w.png", Preprocessing((16, 16), resize="stretch"))
    assert y[..., 0].max() > 200


def test_bgr_reverses_channels(tmp_path):
    p = _save(Image.new("RGB", (16, 16), (1, 2, 3)), tmp_path / "c.png")
    assert tuple(load_image(p, Preprocessing((16, 16), channel_order="BGR"))[0, 0]) == (3, 2, 1)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not an image"),
        (b"not an image at all", "not an image"),
    ],
)
def test_corrupt_files(tmp_path, content, message):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=message) as info:
        load_image(p, RGB)
    assert str(p) in str(info.value)


def test_truncated_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "PNG")
    p = tmp_path / "t.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(p, RGB)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    side = int(MAX_PIXELS**0.5) + 100
    p = _save(Image.new("1", (side, side)), tmp_path / "bomb.png")  # a 1-bit image compresses to almost nothing
    assert p.stat().st_size < 200_000
    with pytest.raises(ImageError, match="over the limit"):
        load_image(p, RGB)


def test_folder_labels_and_batches(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            _save(Image.new("RGB", (10 + i, 12), (i, i, i)), tmp_path / label / f"{i}.png")
    items = list_images(tmp_path)
    assert [it.label for it in items] == ["a"] * 3 + ["b"] * 3
    shapes = [b.shape for _, b in iter_batches(items, RGB, batch_size=4)]
    assert shapes == [(4, 16, 16, 3), (2, 16, 16, 3)]


def test_empty_folder(tmp_path):
    with pytest.raises(ImageError, match="no image files"):
        list_images(tmp_path)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([".png", ".jpg", ".gif", ".bmp"]))
def test_any_bytes_give_pixels_or_image_error(tmp_path_factory, data, suffix):
    p = tmp_path_factory.mktemp("fuzz") / f"x{suffix}"
    p.write_bytes(data)
    try:
        x = load_image(p, RGB)
    except ImageError:
        return
    assert x.shape == (16, 16, 3) and x.dtype == np.uint8
