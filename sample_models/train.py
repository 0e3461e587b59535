"""Retrain every sample model, write the held-out images, and regenerate sample_models/README.md.

    python -m sample_models.train            # everything (about 10 minutes on 2 CPU cores)
    python -m sample_models.train --only squeezenet_digits

Each model folder gets: model.keras (Keras 3, no optimizer state), labels.txt, preprocessing.json and card.json
(input size, parameter count, held-out accuracy and per-class precision/recall/F1, measured here on the held-out
image files through the exporter's own image path). Seeds are fixed; training is deterministic on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from exporter.images import fit, load_image
from exporter.preprocessing import Preprocessing
from exporter.validation.metrics import accuracy, confusion_matrix, macro_f1, per_class

from . import architectures as arch
from . import data

ROOT = data.ROOT
CHECKPOINTS = ROOT / "_checkpoints"
BATCH = 64

DIGITS_PRE = dict(scale=1 / 127.5, bias=-1.0, resize="stretch", interpolation="bilinear", notes="MobileNet convention: pixels to [-1, 1]")
SPECS = {
    "mobilenet_v1_digits": dict(task="digits", size=32, epochs=40, lr=2e-3, pre=DIGITS_PRE, build=lambda s, c: arch.mobilenet_v1(s, c)),
    "mobilenet_v2_digits": dict(task="digits", size=48, epochs=40, lr=2e-3, pre=DIGITS_PRE, build=lambda s, c: arch.mobilenet_v2(s, c)),
    "squeezenet_digits": dict(
        task="digits",
        size=48,
        epochs=40,
        lr=1e-3,
        pre=dict(in_model=True, resize="stretch", interpolation="bilinear", notes="the model starts with Rescaling(1/255)"),
        build=lambda s, c: arch.squeezenet_1_1(s, c),
    ),
    "transfer_photos": dict(
        task="photos", size=64, epochs=(20, 30), lr=(1e-3, 2e-4), pre=None, build=None, unfreeze_from="conv_dw_8", crops=4000
    ),
}


def _seed() -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(data.SEED)
    tf.config.experimental.enable_op_determinism()


# ---------------------------------------------------------------------------------------------------------- datasets
def digits_training(pre: Preprocessing, renders: int = 3):
    """Training pixels: each training digit rendered at several intermediate sizes (the held-out files come in
    different sizes too), then through the exporter's own resize. A seeded 15 % of training digits validate."""
    images, y = data.digits_arrays()
    train_idx, _ = data.digits_split()
    rng = np.random.default_rng(data.SEED + 2)
    rng.shuffle(train_idx)
    n_val = int(len(train_idx) * 0.15)
    val_idx, fit_idx = train_idx[:n_val], train_idx[n_val:]
    sizes = [(8, 8), (16, 16), (24, 24), (32, 32), (40, 40), (64, 64), (28, 36), (48, 40)]
    xs, ys = [], []
    for i in fit_idx:
        for _ in range(renders):
            s = sizes[int(rng.integers(len(sizes)))]
            xs.append(fit(data.render_digit(images[i], s), pre))
            ys.append(y[i])
    x_val = np.stack([fit(data.render_digit(images[i], (8, 8)), pre) for i in val_idx])
    return np.stack(xs), np.array(ys), x_val, y[val_idx]


def photos_crops(pre: Preprocessing | None, count: int, seed: int, size: int):
    """Crops from the training region of each photograph, as many per class as its region's area allows (so the
    classes are imbalanced, as real data is)."""
    rng = np.random.default_rng(seed)
    areas = {}
    for label in data.PHOTO_LABELS:
        (x0, x1), _ = data.photo_regions(label)
        areas[label] = (x1 - x0) * data.photo(label).shape[0]
    total = sum(areas.values())
    probe = pre or Preprocessing((size, size), resize="center_crop")
    xs, ys = [], []
    for c, label in enumerate(data.PHOTO_LABELS):
        region, _ = data.photo_regions(label)
        height = data.photo(label).shape[0]
        for _ in range(max(40, round(count * areas[label] / total))):
            box = data.random_crop_box(rng, region, height)
            xs.append(fit(data.crop(label, box), probe))
            ys.append(c)
    return np.stack(xs), np.array(ys)


# ---------------------------------------------------------------------------------------------------------- training
def _augmenter(task: str):
    import keras
    from keras import layers

    if task == "digits":  # no flips: a mirrored 2 is not a 2
        return keras.Sequential(
            [
                layers.RandomRotation(0.04, fill_mode="constant", seed=data.SEED),
                layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=data.SEED),
                layers.RandomZoom(0.1, fill_mode="constant", seed=data.SEED),
            ]
        )
    return keras.Sequential(
        [layers.RandomFlip("horizontal_and_vertical", seed=data.SEED), layers.RandomRotation(0.05, fill_mode="reflect", seed=data.SEED)]
    )


def _dataset(x, y, pre: Preprocessing, task: str):
    import tensorflow as tf

    augment = _augmenter(task)
    scale, bias = np.float32(pre.scale), np.float32(pre.bias)

    def prepare(images, labels):
        images = augment(tf.cast(images, tf.float32), training=True)
        images = tf.clip_by_value(images + tf.random.normal(tf.shape(images), stddev=3.0, seed=data.SEED), 0, 255)
        return (images if pre.in_model else images * scale + bias), labels

    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=data.SEED)
        .batch(BATCH)
        .map(prepare, num_parallel_calls=2)
        .prefetch(2)
    )


def _class_weight(y) -> dict[int, float]:
    counts = np.bincount(y)
    return {i: float(len(y) / (len(counts) * n)) for i, n in enumerate(counts)}


def fit_best(model, name, x, y, x_val, y_val, pre, task, epochs, lr, best_so_far=None):
    """Train with checkpointing of the best validation epoch; returns the best model and its validation accuracy."""
    import keras

    CHECKPOINTS.mkdir(exist_ok=True)
    ckpt = CHECKPOINTS / f"{name}.keras"
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    cb = keras.callbacks.ModelCheckpoint(str(ckpt), monitor="val_accuracy", save_best_only=True, initial_value_threshold=best_so_far)
    hist = model.fit(
        _dataset(x, y, pre, task),
        validation_data=(pre.normalize(x_val), y_val),
        epochs=epochs,
        class_weight=_class_weight(y),
        callbacks=[cb],
        verbose=2,
    )
    best = max(hist.history["val_accuracy"])
    if best_so_far is not None and best <= best_so_far:
        return None, best_so_far
    return keras.saving.load_model(ckpt), best


# ---------------------------------------------------------------------------------------------------------- outputs
def evaluate(model, pre: Preprocessing, labels: list[str], task: str) -> dict:
    """Held-out accuracy and per-class metrics, through the exporter's own image path on the real files."""
    records = [r for r in data.heldout_records() if r.task == task]
    x = np.stack([load_image(data.HELDOUT / r.file, pre) for r in records])
    y = np.array([labels.index(r.label) for r in records])
    pred = model.predict(pre.normalize(x), verbose=0, batch_size=64).argmax(axis=1)
    cm = confusion_matrix(y, pred, len(labels))
    rows = per_class(cm, labels)
    return {
        "heldout_images": len(records),
        "heldout_accuracy": accuracy(y, pred),
        "macro_f1": macro_f1(rows),
        "per_class": [r.__dict__ for r in rows],
        "confusion_matrix": cm.tolist(),
    }


def save(name: str, model, rebuild, pre: Preprocessing, labels: list[str], task: str, extra: dict) -> dict:
    """Write the model without optimizer state (rebuilt uncompiled, best weights copied), labels, contract, card."""
    folder = ROOT / name
    folder.mkdir(exist_ok=True)
    clean = rebuild()
    clean.set_weights(model.get_weights())
    clean.save(folder / "model.keras")
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "preprocessing.json").write_text(json.dumps(pre.to_dict(), indent=2) + "\n")
    card = {
        "name": name,
        "task": task,
        "architecture": clean.name,
        "input_size": list(pre.input_size),
        "parameters": int(clean.count_params()),
        "file_bytes": (folder / "model.keras").stat().st_size,
        "heldout_folder": f"heldout/{task}",
        **extra,
        **evaluate(clean, pre, labels, task),
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"{name}: held-out accuracy {card['heldout_accuracy']:.3f} on {card['heldout_images']} images")
    return card


def train_digits(name: str) -> dict:
    spec = SPECS[name]
    pre = Preprocessing((spec["size"], spec["size"]), **spec["pre"])
    _seed()
    x, y, x_val, y_val = digits_training(pre)
    model = spec["build"](spec["size"], 10)
    t0 = time.time()
    best, val = fit_best(model, name, x, y, x_val, y_val, pre, "digits", spec["epochs"], spec["lr"])
    return save(
        name,
        best,
        lambda: spec["build"](spec["size"], 10),
        pre,
        data.DIGIT_LABELS,
        "digits",
        {
            "best_validation_accuracy": val,
            "train_seconds": round(time.time() - t0, 1),
            "training_images": int(len(x)),
            "validation_images": int(len(x_val)),
        },
    )


def train_transfer() -> dict:
    """Backbone from the trained MobileNet v1 digits model (task 1), frozen under a new head on the photos (task 2),
    then its top blocks unfrozen at a 10x lower learning rate."""
    import keras

    name, spec = "transfer_photos", SPECS["transfer_photos"]
    size = spec["size"]
    _seed()
    raw_x, y = photos_crops(None, spec["crops"], data.SEED + 3, size)
    raw_val, y_val = photos_crops(None, 500, data.SEED + 4, size)
    mean = raw_x.reshape(-1, 3).mean(axis=0)
    std = raw_x.reshape(-1, 3).std(axis=0)
    pre = Preprocessing.from_mean_std(
        (size, size),
        [round(float(m), 3) for m in mean],
        [round(float(s), 3) for s in std],
        resize="center_crop",
        interpolation="bilinear",
        notes="per-channel mean/std of the photo training crops",
    )

    def build():
        backbone = arch.mobilenet_v1_backbone(size)
        source = keras.saving.load_model(ROOT / "mobilenet_v1_digits" / "model.keras")
        for layer in backbone.layers:
            if layer.weights:
                layer.set_weights(source.get_layer(layer.name).get_weights())
        return arch.transfer_classifier(backbone, len(data.PHOTO_LABELS))

    model = build()
    t0 = time.time()
    model, val1 = fit_best(model, name, raw_x, y, raw_val, y_val, pre, "photos", spec["epochs"][0], spec["lr"][0])
    backbone = model.get_layer("digits_backbone")
    backbone.trainable = True
    start = [layer.name for layer in backbone.layers].index(spec["unfreeze_from"])
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= start and not isinstance(layer, keras.layers.BatchNormalization)
    tuned, val2 = fit_best(model, name, raw_x, y, raw_val, y_val, pre, "photos", spec["epochs"][1], spec["lr"][1], best_so_far=val1)
    final = tuned if tuned is not None else model
    return save(
        name,
        final,
        build,
        pre,
        data.PHOTO_LABELS,
        "photos",
        {
            "best_validation_accuracy": max(val1, val2),
            "frozen_stage_validation_accuracy": val1,
            "fine_tune_improved": tuned is not None,
            "fine_tuned_from_layer": spec["unfreeze_from"],
            "train_seconds": round(time.time() - t0, 1),
            "training_images": int(len(raw_x)),
            "training_class_counts": np.bincount(y).tolist(),
            "validation_images": int(len(raw_val)),
        },
    )


# ---------------------------------------------------------------------------------------------------------- README
def write_readme() -> None:
    cards = [json.loads((ROOT / n / "card.json").read_text()) for n in SPECS if (ROOT / n / "card.json").exists()]
    lines = [
        "# Sample models",
        "",
        "Generated by `python -m sample_models.train`; every number below was measured by that script on the",
        "held-out image files in `heldout/` (never used in training), through the exporter's image path.",
        "",
        "| model | task | input | parameters | .keras bytes | held-out accuracy | macro F1 | preprocessing |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cards:
        pre = json.loads((ROOT / c["name"] / "preprocessing.json").read_text())
        how = "in model" if pre["in_model"] else f"scale {[round(s, 5) for s in pre['scale']]}, bias {[round(b, 4) for b in pre['bias']]}"
        lines.append(
            f"| {c['name']} | {c['task']} | {c['input_size'][0]}x{c['input_size'][1]} | {c['parameters']:,} | "
            f"{c['file_bytes']:,} | {c['heldout_accuracy']:.3f} ({c['heldout_images']} images) | "
            f"{c['macro_f1']:.3f} | {how}; {pre['resize']} |"
        )
    lines += [
        "",
        "Tasks: `digits` is scikit-learn's handwritten digits (held-out samples are other images than the",
        "training samples); `photos` is five materials from scikit-image's photographs (held-out crops come",
        "from the right part of each photograph, training crops from the left, with a gap).",
        "",
    ]
    for c in cards:
        lines += [f"## {c['name']}", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |" for r in c["per_class"]]
        extra = [
            f"best validation accuracy {c['best_validation_accuracy']:.3f}",
            f"{c['training_images']} training images",
            f"trained in {c['train_seconds']} s",
        ]
        if "frozen_stage_validation_accuracy" in c:
            extra.append(
                f"frozen-backbone stage {c['frozen_stage_validation_accuracy']:.3f}, "
                f"fine-tuning from {c['fine_tuned_from_layer']} improved it: {c['fine_tune_improved']}; "
                f"training class counts {c['training_class_counts']} (balanced by class weights)"
            )
        lines += ["", "; ".join(extra) + ".", ""]
    (ROOT / "README.md").write_text("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(SPECS), action="append")
    args = parser.parse_args(argv)
    names = args.only or list(SPECS)
    if not args.only or not (data.HELDOUT / "manifest.json").exists():
        data.write_heldout()
    for name in names:
        (train_transfer if name == "transfer_photos" else lambda n=name: train_digits(n))()
    shutil.rmtree(CHECKPOINTS, ignore_errors=True)
    write_readme()


if __name__ == "__main__":
    main()
