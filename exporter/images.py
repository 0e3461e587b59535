"""Held-out image decoding and resizing: one path that feeds every model the same pixels.

The rule for unusual images, applied in this order (documented in README):
1. EXIF orientation is applied (the pixels are turned the way a photo viewer shows them).
2. 16-bit and 32-bit integer grayscale is reduced to 8 bits (value / 257, rounded); float images are clipped to 0..255.
3. Palette images are expanded (to RGBA when they carry transparency).
4. Alpha is composited over white (``ALPHA_BACKGROUND``), so a transparent pixel reads as paper, not as black.
5. CMYK and other colour spaces are converted to RGB by Pillow; grayscale is repeated to RGB for 3-channel models,
   and RGB is reduced to luma (ITU-R 601-2) for 1-channel models.
6. The resize policy of the preprocessing contract: ``stretch`` resizes to the input size ignoring aspect ratio;
   ``center_crop`` scales the shorter side to the input size and crops the centre.
7. BGR models get their channels reversed after all of the above.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ImageError
from .preprocessing import Preprocessing
from .safety import MEMORY_BUDGET_BYTES, open_regular, tree

IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".tga", ".ico", ".avif",
)  # fmt: skip
# The Pillow decoders an image file may reach, whatever its name says (Pillow picks a decoder by the file's content):
# the formats above (MPO is how Pillow opens a phone's multi-picture JPEG) and nothing else. Pillow also opens EPS
# and PostScript by running Ghostscript on the file when one is installed, and a dozen rare formats through less
# used code; an untrusted "photo.png" holding any of them is refused, never handed to those decoders.
PILLOW_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "DIB", "GIF", "TIFF", "WEBP", "PPM", "TGA", "ICO", "AVIF")
# Largest image we decode. A decompression bomb (a tiny file that expands to gigapixels) is refused before its pixels
# are allocated; 64 megapixels is above any camera a phone classifier sees and keeps one decode under ~256 MB.
MAX_PIXELS = 64_000_000
ALPHA_BACKGROUND = (255, 255, 255)
# Folder entries that are never images of the data set: macOS writes an AppleDouble "._NAME.jpg" next to every file
# it copies to a foreign file system, and its zip tool a "__MACOSX" folder of them; editors and VCS leave ".git",
# ".ipynb_checkpoints" and the like. Anything hidden (a name starting with ".") at any depth is skipped, so a class
# folder named after such a folder never becomes a label and an AppleDouble stub never fails a whole validation.
SKIPPED_FOLDERS = ("__MACOSX",)
# iPhone photos are HEIC (ISO base media files, brand after "ftyp" at byte 4), which Pillow cannot decode without a
# plugin this project does not install: such a file is refused by name, in a folder too, never skipped silently
# (a validation on fewer images than the folder holds would read as a pass on all of them).
HEIF_SUFFIXES = (".heic", ".heif")
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
HEIF_ERROR = "HEIC/HEIF images are not supported (no decoder installed); convert it to JPEG or PNG"
# Other image files in a folder that are refused by name rather than skipped as "not an image": a validation on fewer
# images than the folder holds would read as a pass on all of them. AVIF joins them when this Pillow has no AVIF
# decoder (Pillow 11.2 and later wheels have one).
UNDECODED_IMAGE_SUFFIXES = (".jxl", ".jp2", ".j2k", ".jpx", ".psd", ".svg", ".eps", ".raw", ".dng", ".cr2", ".cr3", ".nef", ".arw")


def decoded_formats() -> tuple[str, ...]:
    """``PILLOW_FORMATS`` that this Pillow can open."""
    from PIL import Image

    Image.init()
    return tuple(f for f in PILLOW_FORMATS if f in Image.OPEN)


def _undecoded(path: Path) -> str | None:
    """Why an image file of this name cannot be decoded here (None when it can, or is not an image at all)."""
    suffix = path.suffix.lower()
    if suffix in HEIF_SUFFIXES:
        return HEIF_ERROR
    if suffix == ".avif" and "AVIF" not in decoded_formats():
        return "AVIF images need Pillow 11.2 or later with its AVIF decoder; upgrade Pillow or convert it to JPEG or PNG"
    if suffix in UNDECODED_IMAGE_SUFFIXES:
        return f"{suffix} images are not supported; convert it to JPEG or PNG"
    return None


def _resample(name: str):
    from PIL import Image

    return {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST, "bicubic": Image.Resampling.BICUBIC}[name]


# Rules 2-5 are applied to horizontal bands of at most this many pixels, each converted and pasted into the result:
# they act on each pixel alone, so the pixels are the same as converting the whole image at once, but a 64-megapixel
# 16-bit image no longer becomes four float64 copies of itself (2 GB from a 140 kB PNG), nor an RGBA one three
# full-size RGBA images on the way to RGB: the memory is the decoded image, the result and one band.
BAND_PIXELS = 1 << 20


def to_canonical_mode(img, channels: int):
    """Apply rules 2-5 to a Pillow image: the result is mode ``RGB`` (channels=3) or ``L`` (channels=1)."""
    from PIL import Image

    target = "L" if channels == 1 else "RGB"
    width, height = img.size
    # rule 2's one decision about the whole image: 32-bit integer values within 0..255 are 8-bit values already
    scale16 = img.mode != "I" or (img.getextrema()[1] or 0) > 255
    if width * height <= BAND_PIXELS:
        return _canonical_band(img, target, scale16)
    out = Image.new(target, img.size)
    rows = max(1, BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        band = img.crop((0, top, width, min(height, top + rows)))
        out.paste(_canonical_band(band, target, scale16), (0, top))
    return out


def _canonical_band(img, target: str, scale16: bool):
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scaled = arr / 257.0 if scale16 else arr
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        transparent = img.info.get("transparency")  # a 16-bit PNG's tRNS: one grey value that is fully transparent
        if isinstance(transparent, int) and not isinstance(transparent, bool):
            gray[arr == transparent] = round(sum(ALPHA_BACKGROUND) / 3)  # rule 4, as an 8-bit image's tRNS gets
        img = Image.fromarray(gray, mode="L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "1":
        img = img.convert("L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode in ("RGB", "L") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != target:
        img = img.convert(target)
    return img


def fit(img, preprocessing: Preprocessing) -> np.ndarray:
    """Resize a canonical Pillow image by the contract's policy; returns uint8 HxWxC in the contract's channel order."""
    height, width = preprocessing.input_size
    resample = _resample(preprocessing.interpolation)
    img = to_canonical_mode(img, preprocessing.channels)
    if preprocessing.resize == "stretch":
        img = img.resize((width, height), resample=resample)
    else:
        w0, h0 = img.size
        factor = max(width / w0, height / h0)
        new_w, new_h = max(width, round(w0 * factor)), max(height, round(h0 * factor))
        if new_w * new_h > MAX_PIXELS:  # a thin strip scaled so its short side fits becomes enormous
            raise ImageError(
                f"image is {w0}x{h0}; center_crop would scale it to {new_w}x{new_h} = "
                f"{new_w * new_h:,} pixels, over the limit of {MAX_PIXELS:,} (aspect ratio too extreme)"
            )
        img = img.resize((new_w, new_h), resample=resample)
        left, top = (new_w - width) // 2, (new_h - height) // 2
        img = img.crop((left, top, left + width, top + height))
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if preprocessing.channel_order == "BGR":
        arr = arr[:, :, ::-1]
    return np.ascontiguousarray(arr)


# Most characters of a C decoder's own message (libtiff's "ZIPDecode: Decoding error at scanline 0, ...") quoted in
# the one-line error.
NATIVE_REASON_CHARS = 200


def open_image(path: str | Path):
    """Decode one file with Pillow, safely: EXIF orientation applied, bombs and corrupt files refused. The C decoders'
    own lines on stderr (libtiff prints its warnings and errors there) are captured: a corrupt file's first one is
    quoted in the one-line error, a decodable file's are dropped."""
    from .console import native_stderr_captured

    path = Path(path)
    with native_stderr_captured() as native:
        return _decoded(path, native)


def _native_reason(native) -> str:
    """`` (first line the C decoder printed)``, or nothing."""
    lines = [line.strip() for line in native.text().splitlines() if line.strip()]
    return f" ({lines[0][:NATIVE_REASON_CHARS]})" if lines else ""


def _decoded(path: Path, native):
    from PIL import Image, ImageOps, UnidentifiedImageError

    # a regular file, opened without blocking: a file of the folder replaced by a FIFO after it was listed hung a
    # plain open (Pillow's) forever
    file = open_regular(path, error=ImageError, what="image file")
    try:
        with file, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file, formats=decoded_formats()) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageError(
                        f"image is {w}x{h} = {w * h:,} pixels, over the limit of {MAX_PIXELS:,} "
                        "(a decompression bomb or an image far too large to classify)",
                        path=path,
                    )
                if img.format == "TIFF":
                    _check_tiff_tiles(img, path)
                img.load()
                return ImageOps.exif_transpose(img)  # a new image (a copy when not turned), the file closed
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        if _is_heif(path):
            raise ImageError(HEIF_ERROR, path=path) from exc
        raise ImageError(
            f"not an image of a supported format ({', '.join(decoded_formats())}), or its header is corrupt{_native_reason(native)}",
            path=path,
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a decompression bomb: {exc}", path=path) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image is corrupt or truncated: {exc}{_native_reason(native)}", path=path) from exc


# TIFF tags of a tiled file: libtiff allocates one tile's buffer (TileWidth x TileLength pixels) before decoding it,
# whatever the image's own size: a 1 kB file of a 64 x 64 image declaring 26000 x 26000 px tiles took 2 GB.
TIFF_TILE_WIDTH, TIFF_TILE_LENGTH = 322, 323


def _check_tiff_tiles(img, path: Path) -> None:
    """Refuse a tiled TIFF whose tiles are over ``MAX_PIXELS``, as an image that size is, before libtiff allocates one
    (real files use tiles of 256 or 512 px a side)."""
    tags = getattr(img, "tag_v2", None) or {}
    width, length = tags.get(TIFF_TILE_WIDTH), tags.get(TIFF_TILE_LENGTH)
    if isinstance(width, int) and isinstance(length, int) and width * length > MAX_PIXELS:
        raise ImageError(
            f"TIFF declares tiles of {width}x{length} = {width * length:,} pixels, over the limit of {MAX_PIXELS:,} "
            f"(its image is {img.size[0]}x{img.size[1]}; a decompression bomb)",
            path=path,
        )


def _is_heif(path: Path) -> bool:
    try:
        with open_regular(path, error=ImageError, what="image file") as f:
            head = f.read(12)
    except (ImageError, OSError):
        return False
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


def load_image(path: str | Path, preprocessing: Preprocessing) -> np.ndarray:
    """One image file -> uint8 HxWxC pixels at the model's input size (before scale and bias)."""
    img = open_image(path)
    try:
        return fit(img, preprocessing)
    except ImageError as exc:
        raise ImageError(str(exc), path=path) from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"image could not be converted: {exc}", path=path) from exc


@dataclass(frozen=True)
class ImageItem:
    path: Path
    label: str | None  # from the sub-folder name, when the image sits in one


def list_images(folder: str | Path) -> list[ImageItem]:
    """Every image under ``folder`` (recursive, sorted); the label is the name of the first sub-folder level.
    Hidden files and folders (``.DS_Store``, AppleDouble ``._x.jpg``) and ``__MACOSX`` are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError("image folder not found or not a directory", path=folder)
    items = []
    for p in _listed(folder):
        rel = p.relative_to(folder)
        why = _undecoded(p) if p.is_file() else None
        if why:
            raise ImageError(why + " (or move it out of the image folder)", path=p)
        if not p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            # named as an image but nothing an image can be read from: skipping it would drop an image from the
            # counts without a word (the same file swapped in after the listing is refused when it is opened)
            kind = "a link to nothing" if p.is_symlink() and not p.exists() else "not a regular file (a FIFO, device or socket)"
            raise ImageError(f"is {kind}, not an image; replace it or move it out of the image folder", path=p)
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            items.append(ImageItem(p, rel.parts[0] if len(rel.parts) > 1 else None))
    if not items:
        raise ImageError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) found", path=folder)
    return items


def _listed(folder: Path) -> list[Path]:
    """Every entry under ``folder`` that is not a folder (files, and links to anything: a symlinked folder is not
    entered), sorted, skipping hidden and ``SKIPPED_FOLDERS`` names at any depth (``safety.tree``: an image folder
    nested a few thousand levels deep is listed, not a RecursionError)."""
    entries = tree(folder, error=ImageError, what="image folder", skip=lambda name: name.startswith(".") or name in SKIPPED_FOLDERS)
    return [p for p in entries if p.is_symlink() or not p.is_dir()]


# A batch of images becomes one float32 tensor, and the model's activations on it are several times larger: the
# input tensor of one batch is held to an eighth of the per-value memory budget, so a model with 4096 px inputs, or a
# --batch-size of thousands, cannot take the machine's memory (224 px RGB: up to 222 images per batch).
BATCH_INPUT_BYTES = MEMORY_BUDGET_BYTES // 8


def batch_limit(preprocessing: Preprocessing, batch_size: int) -> int:
    """``batch_size``, lowered so the batch's float32 input tensor stays within ``BATCH_INPUT_BYTES`` (at least 1)."""
    height, width = preprocessing.input_size
    per_image = height * width * preprocessing.channels * 4
    return max(1, min(batch_size, BATCH_INPUT_BYTES // per_image))


def iter_batches(
    items: Sequence[ImageItem], preprocessing: Preprocessing, batch_size: int = 32
) -> Iterator[tuple[list[ImageItem], np.ndarray]]:
    """Stream ``(items, uint8 NHWC pixels)`` batches, so memory stays flat however many images there are and however
    large the batch asked for (``batch_limit``)."""
    batch_size = batch_limit(preprocessing, batch_size)
    for start in range(0, len(items), batch_size):
        chunk = list(items[start : start + batch_size])
        yield chunk, np.stack([load_image(it.path, preprocessing) for it in chunk])
