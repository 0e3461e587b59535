"""The image input of a Core ML file: which pixels it takes and how they become the network's first tensor.

Core ML hands an image to the model as a float tensor (N, C, H, W) of 0..255 values in the colour space the file
declares: RGB, BGR (channels reversed) or grayscale (one channel). ML Program files then scale and shift it with
ordinary ``mul``/``add`` ops inside the program; NeuralNetwork files declare the scale and per-channel biases in
``preprocessing`` (a ``NeuralNetworkImageScaler``), which ``scaler`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError, ConversionError, UnsupportedOperationError

# ImageFeatureType.ColorSpace values (FeatureTypes.proto).
GRAYSCALE, RGB, BGR, GRAYSCALE_FLOAT16 = 10, 20, 30, 40
ORDERS = {GRAYSCALE: "L", GRAYSCALE_FLOAT16: "L", RGB: "RGB", BGR: "BGR"}


@dataclass(frozen=True)
class ImageInput:
    name: str
    height: int
    width: int
    order: str  # "RGB", "BGR" or "L": the channel order of the tensor the network receives

    @property
    def channels(self) -> int:
        return 1 if self.order == "L" else 3


def image_input(description, where: str) -> ImageInput:
    """The file's single image input."""
    inputs = list(description.input)
    if len(inputs) != 1 or inputs[0].type.WhichOneof("Type") != "imageType":
        kinds = [i.type.WhichOneof("Type") for i in inputs]
        raise UnsupportedOperationError(f"model inputs are {kinds}; the executor runs models with one image input", path=where)
    image = inputs[0].type.imageType
    if image.colorSpace not in ORDERS:
        raise UnsupportedOperationError(f"image colour space {image.colorSpace} is not supported", path=where)
    return ImageInput(inputs[0].name, int(image.height), int(image.width), ORDERS[image.colorSpace])


def to_tensor(pixels: np.ndarray, image: ImageInput, where: str) -> np.ndarray:
    """uint8 (N, H, W, C) RGB or (N, H, W[, 1]) grayscale pixels -> the (N, C, H, W) float32 tensor Core ML feeds
    the network (channels reversed for a BGR file). The result is a view of an NHWC array (see kernels)."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ConfigError(f"pixels must be uint8, got {pixels.dtype}", path=where)
    if pixels.ndim == 3 and image.channels == 1:
        pixels = pixels[..., None]
    expected = (image.height, image.width, image.channels)
    if pixels.ndim != 4 or pixels.shape[1:] != expected:
        raise ConfigError(
            f"pixels must have shape (N, {image.height}, {image.width}, {image.channels}), got {tuple(pixels.shape)}", path=where
        )
    if image.order == "BGR":
        pixels = pixels[..., ::-1]
    return pixels.astype(np.float32).transpose(0, 3, 1, 2)


def scaler(nn, image: ImageInput, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, bias), each broadcastable to (C, H, W), that a NeuralNetwork file applies to its image input:
    y = scale * x + bias. A ``NeuralNetworkImageScaler`` gives one scale and a bias per channel; a
    ``NeuralNetworkMeanImage`` (Caffe-era files) subtracts a whole [C, H, W] mean image, in the channel order the
    network receives (B, G, R for a BGR input)."""
    steps = [p for p in nn.preprocessing if p.featureName in ("", image.name)]
    scale, bias = np.ones((image.channels, 1, 1), np.float32), np.zeros((image.channels, 1, 1), np.float32)
    if len(steps) > 1:
        kinds = [step.WhichOneof("preprocessor") for step in steps]
        raise UnsupportedOperationError(
            f"image input has {len(steps)} preprocessing steps {kinds}, whose order Core ML does not define", path=where
        )
    for step in steps:
        kind = step.WhichOneof("preprocessor")
        if kind == "meanImage":
            mean = np.asarray(step.meanImage.meanImage, np.float32)
            expected = image.channels * image.height * image.width
            if mean.size != expected:
                raise ConversionError(
                    f"mean image has {mean.size} values, the {image.channels}x{image.height}x{image.width} input {expected}", path=where
                )
            return scale, -mean.reshape(image.channels, image.height, image.width)
        if kind != "scaler":
            raise UnsupportedOperationError(f"image preprocessing {kind!r} is not supported", path=where)
        s = step.scaler
        # proto3 cannot tell an unset channelScale from 0; read 0 as unset (1), as coreml_spec.image_preprocessing does.
        scale[:] = s.channelScale if s.channelScale != 0 else 1.0
        if image.order == "L":
            bias[:] = s.grayBias
        elif image.order == "RGB":
            bias[:, 0, 0] = (s.redBias, s.greenBias, s.blueBias)
        else:
            bias[:, 0, 0] = (s.blueBias, s.greenBias, s.redBias)
    return scale, bias
