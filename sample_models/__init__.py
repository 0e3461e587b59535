"""Sample classifiers trained here on real labelled images that ship inside PyPI packages (no downloads)."""
