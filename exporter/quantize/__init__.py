"""Optimisations as pure transforms: ``(model, config) -> new model``; the input model is never changed."""
