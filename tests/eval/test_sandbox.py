"""The sandbox: ordinary programs get their status and reason, limits stop hostile ones, and without a
usable bubblewrap the sandbox refuses with one message naming ``unsafe_exec`` (escapes:
test_sandbox_escapes.py).

Limits are small (1 CPU second, 2-6 s wall) so each case is quick; on a loaded machine a CPU-time
limit may be overtaken by the wall-clock one, and both count as ``timeout``.
"""

from __future__ import annotations

import pickle

import pytest

from lmforge.errors import ConfigError
from lmforge.eval import sandbox
from lmforge.eval.sandbox import Limits, SandboxUnavailable, run_python

FAST = Limits(wall_s=6, cpu_s=1, memory_mb=256, processes=8, file_mb=1)
BWRAP = pytest.mark.usefixtures("bwrap_sandbox")  # skips without bubblewrap; fails under CI=true


@BWRAP
def test_passing_and_failing_programs() -> None:
    ok = run_python("import math\nassert math.gcd(12, 18) == 6\nprint('fine')", FAST)
    assert ok.status == "passed" and ok.stdout.strip() == "fine" and ok.returncode == 0
    assert ok.isolation == "bwrap"
    bad = run_python("def f(x):\n    return x + 1\nassert f(1) == 3, 'f(1) is wrong'", FAST)
    assert bad.status == "failed" and bad.reason == "AssertionError: f(1) is wrong"
    crash = run_python("def f(:\n  pass", FAST)
    assert crash.status == "failed" and "SyntaxError" in crash.reason
    exits = run_python("import sys\nsys.exit(3)", FAST)
    assert exits.status == "failed" and exits.returncode == 3
    wraps = run_python("import sys\nsys.exit(256)", FAST)  # the OS would read 256 as 0
    assert wraps.status == "failed", wraps


@BWRAP
def test_stdlib_and_the_interpreter_are_readable() -> None:
    code = (
        "import json, sqlite3, ctypes, decimal, unittest\n"
        "assert 'def dumps' in open(json.__file__).read()\n"
        "assert sqlite3.connect(':memory:').execute('select 2 + 2').fetchone() == (4,)\n"
        "print('ok')"
    )
    r = run_python(code, FAST)
    assert r.status == "passed" and r.stdout.strip() == "ok", r


@BWRAP
def test_segfault_is_an_error() -> None:
    r = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", FAST)
    assert r.status == "error" and "SIGSEGV" in r.reason


@BWRAP
def test_infinite_loop_times_out() -> None:
    r = run_python("while True:\n    pass", Limits(wall_s=4, cpu_s=1))
    assert r.status == "timeout", r
    assert r.seconds < 15


@BWRAP
def test_sleeping_program_hits_the_wall_clock_limit() -> None:
    r = run_python("import time\ntime.sleep(60)", Limits(wall_s=1.5, cpu_s=5))
    assert r.status == "timeout" and "wall-clock" in r.reason and r.seconds < 10


@BWRAP
def test_huge_memory_is_refused() -> None:
    r = run_python("x = bytearray(2 * 1024**3)\nprint(len(x))", FAST)
    assert r.status == "error" and "memory limit" in r.reason


@BWRAP
def test_file_size_limit_and_the_bounded_work_directory() -> None:
    r = run_python("open('big', 'w').write('x' * (3 * 1024**2))", FAST)
    assert r.status == "error" and "file-size" in r.reason
    small = run_python(
        "open('small', 'w').write('x' * 1000)\nassert open('small').read() == 'x' * 1000\n"
        "open('/tmp/t', 'w').write('y')\nassert open('t').read() == 'y'",  # /tmp is the work directory
        FAST,
    )
    assert small.status == "passed", small
    # many files each under file_mb: the tmpfs (4 x file_mb) fills up, the host's disk and memory do not
    many = run_python("for i in range(10):\n    open(f'f{i}', 'w').write('x' * 1000_000)", FAST)
    assert many.status == "failed" and "No space left on device" in many.reason, many


@BWRAP
def test_output_is_kept_and_bounded() -> None:
    r = run_python(
        "import sys\nprint('a' * 10000)\nprint('tail', file=sys.stderr)\nraise SystemExit(1)", FAST
    )
    assert r.status == "failed" and len(r.stdout) == 4096 and r.stderr.strip() == "tail"


def test_bad_limits() -> None:
    with pytest.raises(ValueError, match="cpu_s"):
        run_python("pass", Limits(cpu_s=0))


def test_refuses_without_bubblewrap_and_names_unsafe_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "sandbox_problem", lambda: "bwrap not found on PATH or in /usr/bin")
    with pytest.raises(SandboxUnavailable) as caught:
        run_python("print('never runs')", FAST)
    e = caught.value
    assert isinstance(e, ConfigError) and e.key == "unsafe_exec"
    assert (
        "bwrap not found" in str(e)
        and "unsafe_exec=true" in str(e)
        and "apt-get install bubblewrap" in str(e)
    )
    assert str(pickle.loads(pickle.dumps(e))) == str(e)  # crosses process boundaries intact


def test_unsafe_exec_runs_with_rlimits_only_and_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sandbox, "sandbox_problem", lambda: "bwrap not found on PATH or in /usr/bin")
    monkeypatch.setattr(sandbox, "_warned_unsafe", False)
    with caplog.at_level("WARNING", logger="lmforge.eval.sandbox"):
        ok = run_python("print(sum(range(10)))", FAST, unsafe_exec=True)
    assert ok.status == "passed" and ok.stdout.strip() == "45" and ok.isolation == "unsafe"
    assert "WITHOUT a sandbox" in caplog.text
    big = run_python("x = bytearray(2 * 1024**3)", FAST, unsafe_exec=True)
    assert big.status == "error" and "memory limit" in big.reason
    slow = run_python("while True:\n    pass", Limits(wall_s=4, cpu_s=1), unsafe_exec=True)
    assert slow.status == "timeout"
