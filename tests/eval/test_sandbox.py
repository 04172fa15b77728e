"""The sandbox: each hostile program fails its own sample with a reason, and leaves nothing behind.

Limits are small (1 CPU second, 2-6 s wall) so each case is quick; on a loaded machine a CPU-time
limit may be overtaken by the wall-clock one, and both count as ``timeout``.
"""

from __future__ import annotations

import os
import socket
import textwrap

import pytest

from lmforge.eval.sandbox import Limits, default_isolation, live_processes, run_python

FAST = Limits(wall_s=6, cpu_s=1, memory_mb=256, processes=8, file_mb=1)
KERNEL = pytest.mark.skipif(default_isolation() != "kernel", reason="kernel isolation needs root on Linux")


def test_passing_and_failing_programs() -> None:
    ok = run_python("import math\nassert math.gcd(12, 18) == 6\nprint('fine')", FAST)
    assert ok.status == "passed" and ok.stdout.strip() == "fine" and ok.returncode == 0
    bad = run_python("def f(x):\n    return x + 1\nassert f(1) == 3, 'f(1) is wrong'", FAST)
    assert bad.status == "failed" and bad.reason == "AssertionError: f(1) is wrong"
    crash = run_python("def f(:\n  pass", FAST)
    assert crash.status == "failed" and "SyntaxError" in crash.reason
    exits = run_python("import sys\nsys.exit(3)", FAST)
    assert exits.status == "failed" and exits.returncode == 3


def test_segfault_is_an_error() -> None:
    r = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", FAST)
    assert r.status == "error" and "SIGSEGV" in r.reason


def test_infinite_loop_times_out() -> None:
    r = run_python("while True:\n    pass", Limits(wall_s=4, cpu_s=1))
    assert r.status == "timeout", r
    assert r.seconds < 15


def test_sleeping_program_hits_the_wall_clock_limit() -> None:
    r = run_python("import time\ntime.sleep(60)", Limits(wall_s=1.5, cpu_s=5))
    assert r.status == "timeout" and "wall-clock" in r.reason and r.seconds < 10


def test_huge_memory_is_refused() -> None:
    r = run_python("x = bytearray(2 * 1024**3)\nprint(len(x))", FAST)
    assert r.status == "error" and "memory limit" in r.reason


def test_file_size_limit() -> None:
    r = run_python("open('big', 'w').write('x' * (3 * 1024**2))", FAST)
    assert r.status == "error" and "file-size" in r.reason
    small = run_python(
        "open('small', 'w').write('x' * 1000)\nassert open('small').read() == 'x' * 1000", FAST
    )
    assert small.status == "passed", small


def test_writing_outside_the_directory_is_refused(tmp_path) -> None:
    target = tmp_path / "escaped.txt"
    for code in (
        f"open({str(target)!r}, 'w').write('hi')",
        f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
        "open('/tmp/lmforge-sandbox-escape-test', 'a').write('hi')",
        "import os\nos.remove('/etc/hostname')",
        # catching the refusal does not turn the sample into a pass
        f"try:\n    open({str(target)!r}, 'w')\nexcept PermissionError:\n    pass",
    ):
        r = run_python(code, FAST)
        assert r.status == "error" and "outside the working directory" in r.reason, (code, r)
    assert not target.exists() and not os.path.exists("/tmp/lmforge-sandbox-escape-test")


def test_network_is_refused() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)"
        r = run_python(code, FAST)
    assert r.status == "error" and "socket" in r.reason


def test_starting_programs_and_ctypes_are_refused() -> None:
    for code in (
        "import os\nos.system('true')",
        "import subprocess\nsubprocess.run(['true'])",
        "import ctypes\nctypes.CDLL(None)",
    ):
        r = run_python(code, FAST)
        assert r.status == "error" and "not allowed" in r.reason, (code, r)


@KERNEL
def test_kernel_blocks_network_without_the_python_hook() -> None:
    """With the audit hook off, the network namespace alone stops a connection to the host."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)"
        r = run_python(code, FAST, python_guard=False)
    assert r.status == "failed" and ("unreachable" in r.reason or "refused" in r.reason), r


@KERNEL
def test_kernel_blocks_writes_without_the_python_hook(tmp_path) -> None:
    """With the audit hook off, the unprivileged uid cannot write to a directory it does not own."""
    target = tmp_path / "escaped.txt"
    r = run_python(f"open({str(target)!r}, 'w').write('hi')", FAST, python_guard=False)
    assert r.status == "failed" and "PermissionError" in r.reason, r
    assert not target.exists()


@KERNEL
def test_fork_bomb_is_bounded_and_cleaned_up() -> None:
    code = textwrap.dedent(
        """
        import os, time
        children = 0
        for _ in range(200):
            try:
                if os.fork() == 0:
                    os.setsid()  # leave the process group: the uid-wide kill still reaches it
                    time.sleep(60)
                    os._exit(0)
                children += 1
            except OSError:
                break
        print(children, os.getuid(), flush=True)
        time.sleep(60)
        """
    )
    r = run_python(code, Limits(wall_s=3, cpu_s=2, processes=8))
    assert r.status == "timeout", r
    children, uid = (int(x) for x in r.stdout.split())
    assert children < 8  # RLIMIT_NPROC stopped the forks
    assert live_processes(uid) == []  # nothing of the sandbox uid survives the run


def test_hook_mode_still_limits_and_refuses() -> None:
    r = run_python("open('/tmp/lmforge-sandbox-escape-test', 'w')", FAST, isolation="hook")
    assert r.status == "error" and r.isolation == "hook"
    ok = run_python("print(sum(range(10)))", FAST, isolation="hook")
    assert ok.status == "passed" and ok.stdout.strip() == "45"


def test_bad_limits() -> None:
    with pytest.raises(ValueError, match="cpu_s"):
        run_python("pass", Limits(cpu_s=0))
    with pytest.raises(ValueError, match="isolation"):
        run_python("pass", isolation="none")
