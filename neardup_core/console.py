"""What a person sees on the console: neardup's own stage lines and real warnings by
default; everything the libraries say with ``--verbose``."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# absl's C++ logging (TensorFlow 2.18+) writes INFO lines to file descriptor 2 before
# Python can configure it; TF_CPP_MIN_LOG_LEVEL no longer reaches them. Lines like
#   I0000 00:00:1796087631.471544    7286 port.cc:153] oneDNN custom operations are on...
_NATIVE_INFO = re.compile(r"^I\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\]")
_NATIVE_NOTICES = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",)


def configure_logging(verbose: bool) -> None:
    """neardup's loggers at INFO; other libraries (py4j, tf2onnx, TensorFlow's Python
    side) at WARNING unless ``verbose``."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # no-op if set up already
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("neardup").setLevel(logging.INFO)
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def native_info_lines(text: str) -> tuple[list[str], list[str]]:
    """Split what native code wrote into (lines to show, INFO lines and notices to drop)."""
    show, drop = [], []
    for line in text.splitlines():
        (drop if _NATIVE_INFO.match(line) or line.strip() in _NATIVE_NOTICES else show).append(line)
    return show, drop


@contextlib.contextmanager
def without_native_info(enabled: bool = True) -> Iterator[None]:
    """While the block runs, file descriptor 2 goes to a temporary file; afterwards its
    lines are written back to stderr, less native INFO lines (:func:`native_info_lines`).
    Warnings and errors still appear, after the block rather than during it."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            show, _ = native_info_lines(captured.read().decode("utf-8", "replace"))
            if show:
                print("\n".join(show), file=sys.stderr, flush=True)
