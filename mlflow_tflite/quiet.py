"""Start TensorFlow without its start-up noise on the terminal.

On a machine without a GPU, importing TensorFlow and running its first op print C++ log lines
("failed call to cuInit", "Could not find cuda drivers", oneDNN notices) straight to file
descriptor 2, before any Python logging setting applies; the ``E`` lines look like failures to
new users. :func:`start_tensorflow` runs the import and first op with descriptor 2 captured and
passes on every captured line that is not one of those known notices.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile

# Start-up lines of TensorFlow 2.x on a CPU-only machine (absl/XLA C++ logging).
_NOISE = re.compile(
    r"cuInit|cuda drivers|cudart_stub|oneDNN custom operations|absl::InitializeLog|"
    r"TF-TRT|Unable to register cu(DNN|FFT|BLAS) factory|computation_placer|"
    r"This TensorFlow binary is optimized|rebuild TensorFlow with the appropriate compiler flags"
)


@contextlib.contextmanager
def captured_stderr(lines: list[str]):
    """Capture file descriptor 2 (C++ logging, which Python's ``sys.stderr`` settings do not reach)
    in the block; append its non-blank lines, without line ends, to ``lines`` when the block ends."""
    with tempfile.TemporaryFile(mode="w+b") as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines.extend(line for line in captured.read().decode(errors="replace").splitlines() if line.strip())


@contextlib.contextmanager
def dropped_lines(noise: re.Pattern):
    """Capture file descriptor 2 (C++ logging) in the block; write back the lines ``noise`` does not match."""
    lines: list[str] = []
    try:
        with captured_stderr(lines):
            yield
    finally:
        sys.stderr.write("".join(line + "\n" for line in lines if not noise.search(line)))


@functools.cache  # once per process
def start_tensorflow() -> None:
    """Import TensorFlow and initialise its devices once, dropping the known start-up notices.

    Lines that are not known notices (a real error during import) are written to stderr as
    they were. Idempotent; a no-op after the first call in a process.
    """
    with dropped_lines(_NOISE):
        import tensorflow as tf

        tf.constant(0.0).numpy()  # the first op initialises the devices (the cuInit line)


@contextlib.contextmanager
def quiet_h5_save():
    """Save a tf_keras model as ``.h5`` without the notices that choice brings.

    The project ships models between processes and caches the demo as ``.h5`` on purpose (one
    file, no SavedModel tracing); tf_keras then warns that HDF5 is "legacy" and, for a compiled
    model that was not trained here, that "compiled metrics have yet to be built". Neither is
    about anything the user did.
    """
    import logging
    import warnings

    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*HDF5 file via `model.save\(\)`.*", category=UserWarning)
            yield
    finally:
        tf_logger.setLevel(level)
