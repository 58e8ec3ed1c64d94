"""What a person sees on the console: neardup's own stage lines and real warnings by
default; everything the libraries say with ``--verbose``."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import sys
import tempfile
import threading
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


@contextlib.contextmanager
def callers_interrupts() -> Iterator[None]:
    """The Ctrl-C handler in place on entry, put back however the block ends (a run
    replaces it). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caller = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, caller)


def note_interrupts() -> threading.Event:
    """From a run's commit on: a Ctrl-C is noted in the returned event instead of raised, so
    that the run still releases its output lock and returns, and the caller can say that
    the output is complete (:func:`exit_on_interrupt`). Main thread only; elsewhere the
    event is never set."""
    noted = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: noted.set())
    return noted


def exit_on_interrupt(message: str, code: int = 130) -> None:
    """From now on a Ctrl-C writes ``message`` to stderr and ends the process at once with
    ``code``: for the time after a run, when nothing is left to clean up and the job's
    handler (:func:`spark.session.quiet_interrupts`) would raise into the summary line or
    the interpreter's shutdown. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    # While the interpreter finishes, after the atexit callbacks, Python gives SIGINT back
    # to the system's default: death by signal (exit -2 to a scheduler). Ignored there
    # instead; the process is ending, and the JVM ends when its pipe to this one closes.
    atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)

    def leave(signum, frame):
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os.write(2, f"{message}\n".encode())
        os._exit(code)

    signal.signal(signal.SIGINT, leave)


def caused_by_interrupt(err: BaseException) -> bool:
    """Whether ``err`` is a Ctrl-C or was raised while one unwound. PySpark calls into the
    JVM on the way out of an interrupted call (``SCCallSiteSync.__exit__``), and that call
    may fail with Py4J's "Answer from Java side is empty", which then replaces the
    KeyboardInterrupt; the interrupt stays in the chain of causes and contexts."""
    seen: BaseException | None = err
    for _ in range(100):  # a chain is short; a cycle is not followed for ever
        if seen is None:
            return False
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
