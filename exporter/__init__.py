"""Export trained Keras image classifiers to Core ML and ONNX with labels and preprocessing embedded,
quantized variants, and parity checked on real held-out images."""

__version__ = "0.1.0"
