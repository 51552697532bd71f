"""refstore.orphans piece by piece (the whole, a killed sync, is in test_faults): processes
spawned while stdio is detached get /dev/null and ours comes back; a process that asked
for PR_SET_PDEATHSIG dies with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from refstore.orphans import detached_stdio, use_pdeathsig
from tests.processes import linux_only, marked, stdio_of, wait_until_gone

pytestmark = linux_only


def test_detached_stdio_gives_children_devnull_and_restores_ours(
    capfd: pytest.CaptureFixture[str],
) -> None:
    ours = stdio_of(os.getpid())
    with detached_stdio():
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        os.write(1, b"lost\n")
    try:
        assert stdio_of(child.pid) == ["/dev/null"] * 3
    finally:
        child.kill()
        child.wait()
    assert stdio_of(os.getpid()) == ours
    os.write(1, b"kept\n")
    out = capfd.readouterr().out
    assert "kept" in out and "lost" not in out


_PARENT = """
import subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c", "from refstore.orphans import set_pdeathsig; import time; "
     "print(set_pdeathsig(), flush=True); time.sleep(60)"],
    stdout=subprocess.PIPE, text=True,
)
print(child.stdout.readline().strip(), flush=True)
time.sleep(60)
"""


def test_a_child_that_asked_for_pdeathsig_dies_with_its_parent() -> None:
    env, marker = marked(dict(os.environ))
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT], env=env, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    with parent.stdout:
        assert parent.stdout.readline().strip() == "True"  # the kernel took note
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    wait_until_gone(marker, within=5)


def test_pdeathsig_can_be_turned_off_to_test_the_portable_watch_alone() -> None:
    assert use_pdeathsig({})
    assert not use_pdeathsig({"REFSTORE_PDEATHSIG": "0"})
