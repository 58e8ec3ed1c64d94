import os
import subprocess
import sys

import pytest

from neardup_core.console import native_info_lines


def test_native_info_lines_are_dropped_and_everything_else_kept():
    text = "\n".join([
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796087631.471544    7286 port.cc:153] oneDNN custom operations are on.",
        "I0000 00:00:1796087641.308807    7286 single_machine.cc:376] Starting new session",
        "W0000 00:00:1796087641.308807    7286 loader.cc:12] a real warning",
        "E0000 00:00:1796087641.308807    7286 loader.cc:12] an error",
        "Traceback (most recent call last):",
    ])
    show, drop = native_info_lines(text)
    assert show == text.splitlines()[3:]
    assert len(drop) == 3


def test_native_stderr_is_filtered_and_python_stderr_kept():
    code = (
        "import os, sys\n"
        "from neardup_core.console import without_native_info\n"
        "with without_native_info():\n"
        "    os.write(2, b'I0000 00:00:1.5    7 port.cc:153] chatter\\n')\n"
        "    os.write(2, b'W0000 00:00:1.5    7 port.cc:153] kept warning\\n')\n"
        "    print('python says', file=sys.stderr)\n"
        "os.write(2, b'after\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == ["W0000 00:00:1.5    7 port.cc:153] kept warning", "python says", "after"]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                          timeout=60)


def test_a_ctrl_c_after_the_commit_is_noted_then_ends_the_process_saying_so():
    code = (
        "import os, signal, time\n"
        "from neardup_core.console import exit_on_interrupt, note_interrupts\n"
        "noted = note_interrupts()\n"
        "print('before', noted.is_set(), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.2)\n"
        "print('noted', noted.is_set(), flush=True)\n"
        "exit_on_interrupt('neardup: interrupted after the run was committed; OUT is complete')\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(10)\n"
        "print('not reached')\n"
    )
    done = _python(code)
    assert done.returncode == 130, done.stderr
    assert done.stdout.splitlines() == ["before False", "noted True"]
    assert done.stderr == "neardup: interrupted after the run was committed; OUT is complete\n"


def test_a_ctrl_c_while_the_interpreter_finishes_is_not_a_death_by_signal():
    # An atexit callback registered first runs last: after exit_on_interrupt's own.
    code = (
        "import atexit, os, signal\n"
        "from neardup_core.console import exit_on_interrupt\n"
        "atexit.register(lambda: (print('ignored', signal.getsignal(signal.SIGINT) == signal.SIG_IGN, flush=True),\n"
        "                         os.kill(os.getpid(), signal.SIGINT)))\n"
        "exit_on_interrupt('said')\n"
    )
    done = _python(code)
    assert (done.returncode, done.stdout, done.stderr) == (0, "ignored True\n", "")


def test_the_callers_ctrl_c_handler_is_put_back_however_the_run_ends():
    code = (
        "import signal\n"
        "from neardup_core.console import callers_interrupts, note_interrupts\n"
        "mine = lambda signum, frame: None\n"
        "signal.signal(signal.SIGINT, mine)\n"
        "with callers_interrupts():\n"
        "    note_interrupts()\n"
        "print(signal.getsignal(signal.SIGINT) is mine)\n"
        "try:\n"
        "    with callers_interrupts():\n"
        "        signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "        raise KeyboardInterrupt\n"
        "except KeyboardInterrupt:\n"
        "    print(signal.getsignal(signal.SIGINT) is mine)\n"
    )
    done = _python(code)
    assert (done.returncode, done.stdout) == (0, "True\nTrue\n"), done.stderr


def _raised_while(first: BaseException, then: Exception) -> Exception:
    """``then`` as Python chains it when raised while ``first`` unwinds (an except or finally block)."""
    try:
        try:
            raise first
        finally:
            raise then
    except Exception as err:  # noqa: BLE001 - the error under test
        return err


def test_an_interrupt_is_found_in_the_chain_of_what_followed_it():
    from neardup_core.console import caused_by_interrupt

    assert caused_by_interrupt(KeyboardInterrupt())
    py4j_after_ctrl_c = _raised_while(KeyboardInterrupt(), ConnectionError("Answer from Java side is empty"))
    assert caused_by_interrupt(py4j_after_ctrl_c)
    wrapped = RuntimeError("stage failed")
    wrapped.__cause__ = py4j_after_ctrl_c
    assert caused_by_interrupt(wrapped)
    assert not caused_by_interrupt(_raised_while(ValueError("a"), RuntimeError("b")))
    loop_a, loop_b = ValueError("a"), ValueError("b")
    loop_a.__context__, loop_b.__context__ = loop_b, loop_a
    assert not caused_by_interrupt(loop_a)


def test_the_cli_reports_an_error_that_followed_a_ctrl_c_as_the_interrupt(tmp_path, monkeypatch, capsys):
    """Outside the job's own handling too (a remote output lock's release calls the JVM)."""
    from neardup_core import cli, job

    def interrupted(*args, **kwargs):
        raise _raised_while(KeyboardInterrupt(), ConnectionError("Answer from Java side is empty"))

    monkeypatch.setattr(job, "run", interrupted)
    args = ["run", "--input", str(tmp_path), "--output", str(tmp_path / "out")]
    assert cli.main(args) == 130
    assert capsys.readouterr().err.splitlines() == ["neardup: interrupted; the output folder holds what it held before"]
    def failed(*args, **kwargs):
        raise RuntimeError("executor lost")

    monkeypatch.setattr(job, "run", failed)
    with pytest.raises(RuntimeError, match="executor lost"):
        cli.main(args)
