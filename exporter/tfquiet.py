"""Import TensorFlow / Keras without the log lines its C++ libraries write to the process's stderr at import time
("All log messages before absl::InitializeLog() ...", the oneDNN and CPU-feature notices). They are written before
TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL``, so the variable alone cannot silence them; they would otherwise surround
the toolkit's one-line errors. The import runs with file descriptor 2 pointed at a temporary file, and every line of
it that is not one of those known notices is written back to stderr afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# Notices TensorFlow's native libraries print while loading, whatever the log level.
IMPORT_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|port\.cc:\d+\] oneDNN custom operations|"
    r"cpu_feature_guard\.cc|Unable to register cu(DNN|FFT|BLAS)|computation placer already|"
    r"TF-TRT Warning|external/local_xla"
)


def quiet_environment() -> None:
    """Set TensorFlow's log level before it is first imported (a user's own setting wins)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _stderr_to_file():
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 (an embedded interpreter): nothing to filter
        yield None
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield sink
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not IMPORT_NOISE.search(line):
                    print(line, file=sys.stderr)


def import_keras():
    """``keras`` (with TensorFlow), imported once without the import-time notices."""
    quiet_environment()
    if "tensorflow" not in sys.modules:
        with _stderr_to_file():
            import tensorflow  # noqa: F401
    import keras

    return keras
