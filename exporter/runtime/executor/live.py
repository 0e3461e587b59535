"""The computed values one forward pass holds at once, counted as the executor runs, and held to
``safety.LIVE_ACTIVATION_BUDGET_BYTES``.

Every value a file declares is bounded on its own (``safety.MEMORY_BUDGET_BYTES``), but a file of many values under
that bound, all alive together, is not: a file whose image input and contract both declared 4000 x 4000 pixels ran
its first pass with 9.5 GB resident. The executor releases each value after its last reader (``plan.plan_release``,
``Network._plan_release``), so what a pass holds is known only as it runs; the meter adds each output and subtracts
each release, and stops the pass at the budget. The first pass of a file (one image, inside the loading boundary)
fails as the file's fault; its peak per image then sets how many images later passes take (up to WORKERS passes
run at once, each within the budget)."""

from __future__ import annotations

import numpy as np

from ... import safety
from ...errors import ConversionError
from ...safety import LIVE_ACTIVATION_BUDGET_BYTES


class Meter:
    """Bytes of computed values alive in one pass of ``images`` images, starting from ``start`` (the input)."""

    __slots__ = ("bytes", "images", "peak", "where")

    def __init__(self, start: int, images: int, where: str):
        self.bytes, self.peak, self.images, self.where = start, start, max(images, 1), where

    def add(self, value, replaced=None) -> None:
        self.bytes += value.nbytes if isinstance(value, np.ndarray) else 0
        if isinstance(replaced, np.ndarray) and replaced is not value:
            self.bytes -= replaced.nbytes
        if self.bytes > self.peak:
            self.peak = self.bytes
            if self.peak > LIVE_ACTIVATION_BUDGET_BYTES:
                raise ConversionError(
                    f"running it on {self.images} image(s) holds more than {LIVE_ACTIVATION_BUDGET_BYTES:,} bytes of "
                    "computed values at once, over the executor's memory budget",
                    path=self.where,
                )

    def remove(self, value) -> None:
        if isinstance(value, np.ndarray):
            self.bytes -= value.nbytes

    @property
    def peak_per_image(self) -> int:
        return -(-self.peak // self.images)


class Constants:
    """Bytes of the constants a file decodes while it loads (ML Program consts and folded values, NeuralNetwork layer
    weights), held to ``safety.CONSTANT_BUDGET_BYTES``: each is bounded on its own, their number is not."""

    __slots__ = ("bytes", "where")

    def __init__(self, where: str):
        self.bytes, self.where = 0, where

    def add(self, value, what: str) -> None:
        if not isinstance(value, np.ndarray):
            return
        self.bytes += value.nbytes
        if self.bytes > safety.CONSTANT_BUDGET_BYTES:
            raise ConversionError(
                f"its constants decode to over {safety.CONSTANT_BUDGET_BYTES:,} bytes together (reached at {what}), over the "
                "executor's memory budget for weights",
                path=self.where,
            )
