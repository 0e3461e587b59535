"""Load-time split of a batchable ML Program into stages that run on passes of different sizes.

A pass's images are limited by the program's largest activation (``CHUNK_ACTIVATION_BYTES``): a layer whose input
and output stay in the last-level cache runs several times faster than one streaming through memory. That largest
activation is near the input (MobileNetV2: 96 x 112 x 112 floats, 4.8 MB an image, so two images a pass), while the
later layers' activations are 10-100 times smaller; on passes of two images their matrix products are short (a 7 x 7
map is 98 rows) and each op's fixed cost is paid eight times for 16 images. So the steps are cut into stages, each
with the most images its own largest activation allows; between stages the values later steps still read are
joined and split again (``regroup``). Per image the arithmetic is the same: every op treats the leading axis as
a batch (that is what ``batchable`` means), and the join copies values, it does not compute.

Measured single-threaded on a 224-px MobileNetV2, batch 16 (CPU time per layer, passes of 2 against 16): 3x3
depthwise over 384 channels at 14 px 32 -> 25 ms, 960 at 7 px 16 -> 11 ms, 1x1 960 -> 160 at 7 px 10.6 -> 7 ms,
while the 112-px layers were up to six times slower on passes of 16.
"""

from __future__ import annotations

import numpy as np

# A later stage starts only where its passes can hold at least this many times the current stage's images (each
# boundary copies the live values once, which a small gain would not repay) and at least STAGE_MIN_IMAGES: the gain
# is in the matrix products and fixed costs of small maps, while a depthwise convolution over a mid-sized map runs
# slower on more images (MobileNetV2's 3x3 over 144 channels at 56 px: 58 ms per 16 images on passes of 6, 36 on
# passes of 2; its sum streams through memory once the pass outgrows the cache).
STAGE_GROWTH = 2
STAGE_MIN_IMAGES = 8


def _per_image_bytes(program, name: str) -> int:
    shape = program.shapes.get(name)
    if not shape or name not in program.batched:
        return 0
    return 4 * int(np.prod(shape[1:]))


def plan_stages(program) -> list[tuple[int, int, int]]:
    """(start, stop, images per pass) over ``program.steps``; also sets ``program.stage_reads``: for each stage
    start, the computed values that steps from there on (or the result) read."""
    from . import CHUNK_ACTIVATION_BYTES, MAX_BATCH  # the package's budgets (imported here: it imports us)

    steps = program.steps
    if not steps:
        return []
    fits = []
    for step in steps:
        names = step.outputs + [n for names in step.call.args.values() for n in names if n not in program.consts]
        largest = max((_per_image_bytes(program, n) for n in names), default=0)
        fits.append(max(1, min(MAX_BATCH, CHUNK_ACTIVATION_BYTES // max(largest, 1))))
    # images a pass may hold from step i to the end: non-decreasing in i
    tail = list(fits)
    for i in range(len(tail) - 2, -1, -1):
        tail[i] = min(tail[i], tail[i + 1])
    stages = [[0, 0, tail[0]]]
    for i in range(1, len(steps)):
        if tail[i] >= max(STAGE_GROWTH * stages[-1][2], STAGE_MIN_IMAGES):
            stages[-1][1] = i
            stages.append([i, 0, tail[i]])
    stages[-1][1] = len(steps)
    reads: dict[int, set[str]] = {}
    later: set[str] = {program.probabilities}
    starts = {start for start, _, _ in stages}
    for i in range(len(steps) - 1, -1, -1):
        if not steps[i].observe_only:
            later.update(n for names in steps[i].call.args.values() for n in names if n not in program.consts)
        if i in starts:
            reads[i] = set(later)
    program.stage_reads = reads
    return [(start, stop, images) for start, stop, images in stages]


def even_bounds(n: int, count: int) -> list[int]:
    """Boundaries of ``n`` images in ``count`` passes of sizes that differ by at most one."""
    return [int(b) for b in np.linspace(0, n, count + 1).round().astype(int)]


def even_sizes(n: int, count: int) -> list[int]:
    bounds = even_bounds(n, count)
    return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """The parts joined along axis 0 in the memory order of the first (a logically NCHW value held as NHWC stays
    NHWC in memory, as the kernels expect: see kernels)."""
    first = parts[0]
    rest = sorted(range(1, first.ndim), key=lambda axis: -first.strides[axis])
    order = [0, *rest]
    joined = np.concatenate([np.asarray(p).transpose(order) for p in parts], axis=0)
    return joined.transpose(np.argsort(order))


def regroup(envs: list[dict], sizes: list[int], count: int, keep: set[str]) -> list[dict]:
    """The values named in ``keep`` of passes ``envs`` (of ``sizes`` images, in order) as ``count`` passes of even
    sizes; each new pass starts from a copy of the first's other entries (the program's constants)."""
    n = sum(sizes)
    bounds = even_bounds(n, count)
    live = [name for name in envs[0] if name in keep]
    base = {name: value for name, value in envs[0].items() if name not in keep}
    joined = {name: _join([env[name] for env in envs]) for name in live}
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        env = dict(base)
        env.update({name: value[a:b] for name, value in joined.items()})
        out.append(env)
    return out
