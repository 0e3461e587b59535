"""Inputs users hand the CLI besides the model: odd image folders and files (found by an input bug hunt)."""

import numpy as np
import pytest
from PIL import Image

from exporter.errors import ImageError
from exporter.images import list_images, load_image
from exporter.preprocessing import Preprocessing

RGB = Preprocessing((16, 16))


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (9, 7), (value, value, value)).save(path)
    return path


def test_hidden_files_and_macos_folders_are_not_images(tmp_path):
    # macOS copies leave AppleDouble stubs "._x.png" (not images) beside each file and zips a "__MACOSX" tree of them
    _png(tmp_path / "cat" / "a.png")
    _png(tmp_path / "dog" / "b.png")
    (tmp_path / "cat" / "._a.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(60))
    (tmp_path / "__MACOSX" / "cat").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "cat" / "._a.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    _png(tmp_path / ".thumbnails" / "t.png")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(40))
    items = list_images(tmp_path)
    assert [(it.path.name, it.label) for it in items] == [("a.png", "cat"), ("b.png", "dog")]


def test_a_folder_given_through_a_hidden_path_still_lists(tmp_path):
    _png(tmp_path / ".data" / "cat" / "a.png")
    assert [it.label for it in list_images(tmp_path / ".data")] == ["cat"]


def _heic_bytes():
    # the first box of an iPhone photo: size, "ftyp", major brand "heic", minor version, compatible brands
    return (24).to_bytes(4, "big") + b"ftypheic" + bytes(4) + b"mif1heic" + bytes(40)


def test_heic_file_is_named_as_unsupported(tmp_path):
    p = tmp_path / "IMG_0001.jpg"  # renamed: the content decides
    p.write_bytes(_heic_bytes())
    with pytest.raises(ImageError, match=r"IMG_0001\.jpg: HEIC/HEIF images are not supported"):
        load_image(p, RGB)


def test_heic_in_a_folder_is_refused_not_skipped(tmp_path):
    _png(tmp_path / "cat" / "a.png")
    (tmp_path / "cat" / "IMG_0002.HEIC").write_bytes(_heic_bytes())
    with pytest.raises(ImageError, match=r"IMG_0002\.HEIC: HEIC/HEIF images are not supported"):
        list_images(tmp_path)


def test_multi_frame_images_give_their_first_frame(tmp_path):
    frames = [Image.new("RGB", (12, 12), c) for c in ((255, 0, 0), (0, 0, 255))]
    for suffix in (".gif", ".tiff", ".webp"):
        p = tmp_path / f"anim{suffix}"
        frames[0].save(p, save_all=True, append_images=frames[1:])
        px = load_image(p, RGB).astype(int)
        assert px[..., 0].min() > 200 and px[..., 2].max() < 50, suffix  # red, the first frame


@pytest.mark.parametrize("size", [(1, 1), (1, 3000), (3000, 1)])
def test_degenerate_sizes_are_resized(tmp_path, size):
    p = tmp_path / "x.png"
    Image.new("L", size, 77).save(p)
    px = load_image(p, RGB)
    assert px.shape == (16, 16, 3)
    np.testing.assert_array_equal(px, 77)


def test_quantize_typo_gets_a_suggestion(capsys):
    from exporter.cli import _parser

    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["convert", "m.keras", "--labels", "l.txt", "--out", "o", "--quantize", "autp"])
    assert exc.value.code == 2
    assert "unknown quantize mode 'autp' (did you mean 'auto'?)" in capsys.readouterr().err


def test_predict_names_an_image_that_is_a_fifo(tmp_path):
    import os

    from exporter.predict import _image_files

    os.mkfifo(tmp_path / "photo.jpg")
    with pytest.raises(ImageError, match=r"photo\.jpg: is not a regular file"):
        _image_files([tmp_path / "photo.jpg"])


def test_preprocessing_notes_must_be_text():
    from exporter.errors import ConfigError

    with pytest.raises(ConfigError, match="notes must be a string"):
        Preprocessing.from_dict({"input_size": [32, 32], "notes": {"a": 1}})


@pytest.mark.parametrize("command", [["doctor"], ["predict", "no_export", "no.png"]])
def test_json_file_in_a_missing_folder_is_refused_before_any_work(tmp_path, command):
    # predict and doctor wrote --json FILE after their work and died with exit 70 (FileNotFoundError) on a bad path
    from exporter.cli import run
    from exporter.errors import DestinationError

    with pytest.raises(DestinationError, match="the report's folder does not exist"):
        run([*command, "--json", str(tmp_path / "missing" / "out.json")])


def test_convert_json_may_go_into_the_export_folder(tmp_path):
    from exporter.cli import run
    from exporter.errors import ModelLoadError

    out = tmp_path / "out"
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    with pytest.raises(ModelLoadError):  # the missing model is the error, not the JSON file's future folder
        run(["convert", str(tmp_path / "none.keras"), "--labels", str(labels), "--out", str(out), "--json", str(out / "m.json")])


def test_transparent_value_of_a_16_bit_png_is_composited_like_an_8_bit_one(tmp_path):
    values = np.array([[1000, 2000]], np.uint16).repeat(10, axis=0).repeat(10, axis=1)
    Image.fromarray(values).save(tmp_path / "g16.png", transparency=1000)
    Image.fromarray(np.rint(values / 257).astype(np.uint8)).save(tmp_path / "g8.png", transparency=round(1000 / 257))
    wide = Preprocessing((10, 20), resize="stretch", interpolation="nearest")
    px16, px8 = load_image(tmp_path / "g16.png", wide), load_image(tmp_path / "g8.png", wide)
    assert px16[0, 0, 0] == 255 and px16[0, -1, 0] == round(2000 / 257)
    np.testing.assert_array_equal(px16, px8)


def test_batch_input_tensor_is_bounded():
    from exporter.images import BATCH_INPUT_BYTES, batch_limit

    assert batch_limit(Preprocessing((32, 32)), 32) == 32  # small inputs keep the asked batch
    assert batch_limit(Preprocessing((4096, 4096)), 32) == 1  # one image is over the bound: never fewer than one
    n = batch_limit(Preprocessing((1024, 1024)), 32)
    assert n * 1024 * 1024 * 3 * 4 <= BATCH_INPUT_BYTES < (n + 1) * 1024 * 1024 * 3 * 4
    assert batch_limit(Preprocessing((224, 224)), 10**12) * 224 * 224 * 3 * 4 <= BATCH_INPUT_BYTES


def test_every_batch_stream_holds_the_bound(tmp_path, monkeypatch):
    # the bound is in iter_batches, which validate, golden files and calibration all stream through, not in one caller
    import exporter.images as images

    for i in range(5):
        _png(tmp_path / f"{i}.png")
    monkeypatch.setattr(images, "BATCH_INPUT_BYTES", 2 * 64 * 64 * 3 * 4)  # two 64 px images per batch
    sizes = [len(chunk) for chunk, _ in images.iter_batches(images.list_images(tmp_path), Preprocessing((64, 64)), 1000)]
    assert sizes == [2, 2, 1]


def test_parity_table_names_sub_folders_that_are_not_labels():
    # validate counted images under a folder named "Three" (label "3") as unlabelled and said nothing in the table
    from exporter.report.terminal import parity_table

    report = {"artifacts": [], "images": 7, "labels_unknown_to_model": [f"f{i}" for i in range(7)]}
    line = parity_table(report).splitlines()[-2]  # the verdict line ends the table
    assert line.startswith("7 sub-folder name(s) are not labels of the model") and "'f4'" in line
    assert "'f5'" not in line and line.endswith("and 2 more")
    assert "sub-folder" not in parity_table({"artifacts": [], "images": 7, "labels_unknown_to_model": []})


def test_symlink_loops_end_and_folder_links_are_not_followed(tmp_path):
    # rglob does not follow symlinked folders: a loop (or a link to "/" in a downloaded data set) cannot make a listing
    # endless or read outside the folder; a symlinked image file is read
    data = tmp_path / "data"
    _png(data / "cat" / "a.png")
    _png(tmp_path / "elsewhere" / "b.png")
    (data / "cat" / "loop").symlink_to(data, target_is_directory=True)
    (data / "dog").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (data / "cat" / "linked.png").symlink_to(tmp_path / "elsewhere" / "b.png")
    items = list_images(data)
    assert [it.path.relative_to(data).as_posix() for it in items] == ["cat/a.png", "cat/linked.png"]


def test_an_image_name_that_is_no_file_is_refused_not_skipped(tmp_path):
    """A dangling symlink, a FIFO or a link to a device named like an image was left out of the listing without a
    word (the image counts silently smaller), while the same file swapped in after the listing was refused when opened
    (found by the round-6 hostile hunt). It is now refused by name, as an undecodable image is."""
    import os

    from exporter.errors import ImageError

    for name, make in (
        ("dangling.png", lambda p: p.symlink_to(tmp_path / "missing.png")),
        ("fifo.jpg", lambda p: os.mkfifo(p)),
        ("zero.png", lambda p: p.symlink_to("/dev/zero")),
    ):
        data = tmp_path / name.split(".")[0]
        _png(data / "cat" / "a.png")
        make(data / "cat" / name)
        with pytest.raises(ImageError) as info:
            list_images(data)
        line = str(info.value)
        assert name in line and "\n" not in line
        assert ("link to nothing" in line) == (name == "dangling.png")
    other = tmp_path / "other"
    _png(other / "cat" / "a.png")
    os.mkfifo(other / "cat" / "notes")  # not named as an image: not ours to judge
    assert len(list_images(other)) == 1


def test_overwrite_never_replaces_a_folder_the_toolkit_did_not_write(tmp_path):
    # `--out . --overwrite` deleted whatever the folder held and put an export there
    from exporter.errors import DestinationError
    from exporter.packaging import MANIFEST_NAME, atomic_directory

    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    with pytest.raises(DestinationError, match="did not write"):
        with atomic_directory(precious, overwrite=True, ours=(MANIFEST_NAME,)) as stage:
            (stage / MANIFEST_NAME).write_text("{}")
    assert [p.name for p in precious.iterdir()] == ["chapter1.tex"]
    (tmp_path / "empty").mkdir()
    for replaceable in (tmp_path / "empty", precious):  # an empty folder, or one holding a previous export
        (precious / MANIFEST_NAME).write_text("{}")
        with atomic_directory(replaceable, overwrite=True, ours=(MANIFEST_NAME,)) as stage:
            (stage / "new.txt").write_text("new")
        assert [p.name for p in replaceable.iterdir()] == ["new.txt"]
