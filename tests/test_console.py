import os
import subprocess
import sys

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
