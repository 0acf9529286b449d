"""The test helpers' own guarantees: a hung command fails its test with the stacks of its processes."""
import sys

import pytest

from train_helpers import run


def test_a_command_still_running_at_its_timeout_fails_with_every_processs_stack():
    # the command waits until the process it started is up (its stack printer installed) before it hangs itself
    grandchild = "import time; print('up', flush=True); time.sleep(120)"
    child = f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {grandchild!r}], " \
            "stdout=subprocess.PIPE); p.stdout.readline(); time.sleep(120)"
    with pytest.raises(AssertionError, match="still running after 10 s") as failure:
        run([sys.executable, "-c", child], timeout=10)
    message = str(failure.value)
    assert message.count("Fatal Python error: Aborted") == 2  # the command and the process it started
    assert message.count('File "<string>", line 1 in <module>') == 2
