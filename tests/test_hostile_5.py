"""Hostile input, round 5 (docs/THREAT_MODEL.md): what the earlier rounds (test_hostile.py, test_hostile_h5.py,
test_hostile_3.py, test_hostile_4.py, test_input_hunt.py, test_fuzz.py) left open. Each test fails without its fix."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.preprocessing import Preprocessing

TINY = Preprocessing(input_size=(32, 32))


# ------------------------------------------------------------------------------------------------ images
# Decoded images of this many pixels (16 MP, a phone photo) keep the test fast while a copy of them is tens of MB.
BIG_SIDE = 4000
# What decoding and converting one image may take per pixel: the decoded image and its copy turned by its EXIF
# orientation (up to 4 bytes a pixel each), the RGB result (3) and slack for one band and the allocator (measured:
# 8.7 for 16-bit, 7.5 for RGBA). Before the fix a 16-bit image took 38 bytes a pixel (four float64 copies of it)
# and an RGBA one 20 (full-size RGBA copies on the way to RGB).
MAX_DECODE_BYTES_PER_PIXEL = 12


@pytest.mark.parametrize("mode", ["I;16", "RGBA"])
def test_a_large_16_bit_or_transparent_image_is_converted_without_copies_of_its_size(tmp_path, mode):
    # a 16-bit PNG of 64 MP (a 140 kB file, under MAX_PIXELS) took 2.4 GB to decode and reduce to 8 bits: the whole
    # image became four float64 arrays; a transparent one was copied three times as RGBA before compositing
    from peakmem import peak_growth
    from PIL import Image

    from exporter.images import load_image

    path = tmp_path / "big.png"
    Image.new(mode, (BIG_SIDE, BIG_SIDE), 1000 if mode == "I;16" else (10, 20, 30, 128)).save(path)
    with peak_growth() as peak:
        pixels = load_image(path, TINY)
    assert pixels.shape == (32, 32, 3)
    assert peak.growth_bytes < MAX_DECODE_BYTES_PER_PIXEL * BIG_SIDE * BIG_SIDE, peak.growth_bytes / BIG_SIDE**2


def _odd_mode_images() -> dict:
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((97, 61, 3)) * 255).astype(np.uint8))
    images = {m: rgb.convert(m) for m in ("RGB", "RGBA", "L", "LA", "1", "CMYK", "YCbCr", "PA", "P")}
    images["P-transparent"] = rgb.convert("P")
    images["P-transparent"].info["transparency"] = 5
    images["RGB-transparent"] = rgb.copy()
    images["RGB-transparent"].info["transparency"] = tuple(np.asarray(rgb)[3, 4].tolist())
    deep = (rng.random((97, 61)) * 65535).astype("<u2")
    images["I;16-transparent"] = Image.frombytes("I;16", (61, 97), deep.tobytes())
    images["I;16-transparent"].info["transparency"] = int(deep[2, 2])
    small = (rng.random((97, 61)) * 200).astype(np.int32)
    images["I-8-bit-values"] = Image.fromarray(small)
    small = small.copy()
    small[96, 60] = 300  # one value over 255, in the last band: the whole image is scaled, as before
    images["I-one-large-value"] = Image.fromarray(small)
    images["F"] = Image.fromarray((rng.random((97, 61)) * 400 - 50).astype(np.float32))
    return images


def test_converting_an_image_in_bands_gives_the_pixels_of_converting_it_whole(monkeypatch):
    import exporter.images as images

    for name, img in _odd_mode_images().items():
        for channels in (1, 3):
            monkeypatch.setattr(images, "BAND_PIXELS", 1 << 30)
            whole = np.asarray(images.to_canonical_mode(img, channels))
            monkeypatch.setattr(images, "BAND_PIXELS", 61 * 7 + 3)  # bands of 7 rows, the last one short
            banded = np.asarray(images.to_canonical_mode(img, channels))
            assert whole.shape == (97, 61) if channels == 1 else (97, 61, 3)
            np.testing.assert_array_equal(banded, whole, err_msg=f"{name}, {channels} channel(s)")
