"""The NeuralNetwork (.mlmodel) NonMaximumSuppression layer (iOS 14) in numpy, as ``NeuralNetwork.proto`` defines it.

Per batch entry: each box's score is its largest class score; boxes scoring below ``scoreThreshold`` are rejected;
the rest are taken in order of falling score, each kept unless its IoU with a box already kept (of the same best
class, with ``perClassSuppression``) is over ``iouThreshold``, up to ``maxBoxes``. Outputs: the kept boxes, their
class scores, their indices and how many were kept, padded to ``maxBoxes`` with 0 (indices -1). When no box scores
above the threshold, the best-scoring box is kept, so that the output is never empty. Thresholds and ``maxBoxes``
come from the third to fifth inputs when given. Boxes are (x centre, y centre, width, height)."""

from __future__ import annotations

import numpy as np

from .blob import bounded_count
from .nnlayers import F32, LayerContext, layer


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one (x, y, w, h) box with each of ``others`` (0 where the union is empty)."""
    lo = np.maximum(box[:2] - box[2:] / 2, others[:, :2] - others[:, 2:] / 2)
    hi = np.minimum(box[:2] + box[2:] / 2, others[:, :2] + others[:, 2:] / 2)
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    union = box[2] * box[3] + others[:, 2] * others[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def _scalar(inputs, index: int, default):
    return float(np.asarray(inputs[index]).reshape(-1)[0]) if len(inputs) > index else default


@layer("NonMaximumSuppression")
def _nms(p, ctx: LayerContext):
    def run(inputs):
        boxes, scores = np.asarray(inputs[0], np.float64), np.asarray(inputs[1], np.float64)
        if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
            raise ctx.fail(f"gets boxes {boxes.shape} and scores {scores.shape}; it takes (B, N, 4) and (B, N, C)")
        iou_limit = _scalar(inputs, 2, float(p.iouThreshold))
        score_limit = _scalar(inputs, 3, float(p.scoreThreshold))
        count = _scalar(inputs, 4, float(p.maxBoxes))
        if count != int(count) or count < 1:
            raise ctx.fail(f"keeps at most {count} boxes; it needs a whole positive number")
        most = int(count)
        batch, n, classes = scores.shape
        bounded_count((batch, most, max(classes, 4)), ctx.where, f"NonMaximumSuppression {ctx.name!r} output")
        out_boxes = np.zeros((batch, most, 4), F32)
        out_scores = np.zeros((batch, most, classes), F32)
        out_index = np.full((batch, most), -1, F32)
        kept_count = np.zeros(batch, F32)
        for b in range(batch):
            best, label = scores[b].max(axis=1), scores[b].argmax(axis=1)
            order = [int(i) for i in np.argsort(-best, kind="stable") if best[i] >= score_limit]
            kept: list[int] = []
            for i in order:
                if len(kept) == most:
                    break
                rivals = [j for j in kept if not p.perClassSuppression or label[j] == label[i]]
                if not rivals or np.all(iou(boxes[b, i], boxes[b, rivals]) <= iou_limit):
                    kept.append(i)
            if not kept and n:
                kept = [int(np.argmax(best))]
            out_boxes[b, : len(kept)] = boxes[b, kept]
            out_scores[b, : len(kept)] = scores[b, kept]
            out_index[b, : len(kept)] = kept
            kept_count[b] = len(kept)
        return [out_boxes, out_scores, out_index, kept_count][: ctx.outputs]

    return run, lambda shapes: False
