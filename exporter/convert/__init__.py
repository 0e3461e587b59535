"""Converters from a loaded Keras classifier to each target format."""
