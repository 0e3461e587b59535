"""Streaming parity statistics: each batch updates running sums, so memory stays flat however many images there are
(only the ``KEEP_WORST`` worst images and the first ``KEEP_FLIPPED`` flipped images are kept by name)."""

from __future__ import annotations

import heapq

import numpy as np

from .metrics import confusion_matrix, per_class

KEEP_WORST = 8
KEEP_FLIPPED = 50
TOP_K = 5
# Probabilities are clipped to this before logs: float32 softmax can return exact zeros, and KL must stay finite.
KL_EPSILON = 1e-7


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row, in nats. Each row is renormalised after clipping: float32 probability rows sum to 1 only
    within rounding, and KL between rows that do not each sum to one can come out negative (reports showed a mean KL
    of -1e-10 for files equal to the model). What is left below zero is float64 rounding, reported as 0."""
    p = np.clip(p.astype(np.float64), KL_EPSILON, 1.0)
    q = np.clip(q.astype(np.float64), KL_EPSILON, 1.0)
    p /= p.sum(axis=1, keepdims=True)
    q /= q.sum(axis=1, keepdims=True)
    return np.maximum((p * (np.log(p) - np.log(q))).sum(axis=1), 0.0)


def top_k_overlap(p: np.ndarray, q: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Fraction of the reference's top-k classes that are also in the other's top-k, per row."""
    k = min(k, p.shape[1])
    a = np.argsort(-p, axis=1)[:, :k]
    b = np.argsort(-q, axis=1)[:, :k]
    return np.array([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)])


class LabelStats:
    """Accuracy and confusion matrix against the folder labels, for one model."""

    def __init__(self, num_classes: int):
        self.cm = np.zeros((num_classes, num_classes), np.int64)

    def update(self, probs: np.ndarray, label_idx: np.ndarray) -> None:
        known = label_idx >= 0
        if known.any():
            self.cm += confusion_matrix(label_idx[known], probs.argmax(1)[known], self.cm.shape[0])

    @property
    def labelled(self) -> int:
        return int(self.cm.sum())

    def summary(self, labels: list[str]) -> dict | None:
        if not self.labelled:
            return None
        return {
            "accuracy": float(np.trace(self.cm) / self.labelled),
            "images": self.labelled,
            "per_class": [r.__dict__ for r in per_class(self.cm, labels)],
            "confusion_matrix": self.cm.tolist(),
        }


class ParityStats:
    """One converted artifact against the Keras reference."""

    def __init__(self, num_classes: int):
        self.images = 0
        self.agree = 0
        self.top5 = 0.0
        self.abs_sum = 0.0
        self.max_abs = 0.0
        self.kl_sum = 0.0
        self.kl_max = 0.0
        self.flipped_count = 0
        self.flipped: list[dict] = []
        self.flipped_max_keras_margin = 0.0  # over every flipped image, not only those kept by name
        self._worst: list[tuple[float, int, dict]] = []
        self._seq = 0
        self.labels = LabelStats(num_classes)

    def update(self, ref: np.ndarray, got: np.ndarray, paths: list[str], label_idx: np.ndarray, names: list[str]) -> None:
        diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
        # A NaN or infinite output is the largest possible disagreement, not a missing value that max() skips.
        diff[~np.isfinite(diff)] = np.inf
        per_image = diff.max(axis=1)
        kl = kl_divergence(ref, got)
        top_ref, top_got = ref.argmax(1), got.argmax(1)
        self.images += len(ref)
        self.agree += int((top_ref == top_got).sum())
        self.top5 += float(top_k_overlap(ref, got).sum())
        self.abs_sum += float(diff.mean(axis=1).sum())
        self.max_abs = max(self.max_abs, float(per_image.max()))
        self.kl_sum += float(kl.sum())
        self.kl_max = max(self.kl_max, float(kl.max()))
        self.labels.update(got, label_idx)
        for i in range(len(ref)):
            row = {
                "image": paths[i],
                "keras": names[top_ref[i]],
                "keras_p": float(ref[i, top_ref[i]]),
                "converted": names[top_got[i]],
                "converted_p": float(got[i, top_got[i]]),
                "max_abs_prob": float(per_image[i]),
                "kl": float(kl[i]),
            }
            if top_ref[i] != top_got[i]:
                self.flipped_count += 1
                # how far Keras' answer led the class the artifact chose, in Keras' own probabilities: a flip of a
                # near-tie (Keras itself hesitating) reads differently from a flip of a clear decision
                margin = float(ref[i, top_ref[i]]) - float(ref[i, top_got[i]])
                self.flipped_max_keras_margin = max(self.flipped_max_keras_margin, margin)
                if len(self.flipped) < KEEP_FLIPPED:
                    self.flipped.append({**row, "keras_margin": margin})
            self._seq += 1
            item = (float(per_image[i]), self._seq, row)
            if len(self._worst) < KEEP_WORST:
                heapq.heappush(self._worst, item)
            elif item[0] > self._worst[0][0]:
                heapq.heapreplace(self._worst, item)

    def summary(self, labels: list[str], keras_labels: LabelStats) -> dict:
        n = max(self.images, 1)
        out = {
            "images": self.images,
            "top1_agreement": self.agree / n,
            "top5_overlap": self.top5 / n,
            "max_abs_prob": self.max_abs,
            "mean_abs_prob": self.abs_sum / n,
            "mean_kl": self.kl_sum / n,
            "max_kl": self.kl_max,
            "flipped_count": self.flipped_count,
            "flipped_max_keras_margin": self.flipped_max_keras_margin,
            "flipped": self.flipped,
            "worst": [row for _, _, row in sorted(self._worst, key=lambda t: (-t[0], t[1]))],
        }
        mine, ref = self.labels.summary(labels), keras_labels.summary(labels)
        if mine and ref:
            for row, keras_row in zip(mine["per_class"], ref["per_class"], strict=True):
                for k in ("precision", "recall", "f1"):
                    row[f"{k}_change"] = row[k] - keras_row[k]
            mine["accuracy_change"] = mine["accuracy"] - ref["accuracy"]
        out["against_labels"] = mine
        return out
