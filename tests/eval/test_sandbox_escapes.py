"""The escapes a security review found in the audit-hook sandbox, each run against the bubblewrap one
and shown contained (docs/security.md, "Code sandbox", cites these tests):

- writing outside through a directory file descriptor (``dir_fd``, ``dst_dir_fd``);
- starting programs through ``_posixsubprocess.fork_exec``, ``os.system`` and ``subprocess``: they
  start, inside the sandbox, and reach nothing more than the program itself;
- switching the Python guard off from inside, then using sockets: there is no guard to switch off,
  and the network namespace has nothing to connect to (a server the test listens on stays unreached);
- signalling the caller (``os.kill(os.getppid(), SIGKILL)``, its pid, ``kill(-1)``);
- a child that calls ``setsid`` and forks again, so it left the process group: gone after the run,
  whether the program ends or is killed on the wall clock (the same program under ``unsafe_exec``
  leaves it behind, which shows the check sees such a process);
- reading the caller's files (a secret under the test's temporary directory, the project's source);
- a fork bomb, held at ``processes`` and gone after the run.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmforge.eval import sandbox
from lmforge.eval.sandbox import Limits, run_python

pytestmark = pytest.mark.usefixtures("bwrap_sandbox")  # skips without bubblewrap; fails under CI=true

FAST = Limits(wall_s=8, cpu_s=2, memory_mb=256, processes=16, file_mb=1)


def _host_address() -> str:
    """This machine's address on its default route (no packet is sent), or loopback if it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


@pytest.fixture
def server() -> Iterator[socket.socket]:
    """A TCP server on every address of the host, port chosen by the kernel."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield s


def _reached(server: socket.socket) -> bool:
    return bool(select.select([server], [], [], 0.2)[0])


def _processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker`` (not zombies)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
            state = Path(entry.path, "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def test_dir_fd_writes_stay_inside(tmp_path: Path) -> None:
    name = f"lmforge-pwned-{uuid.uuid4().hex}"
    code = textwrap.dedent(
        f"""
        import os
        for target in ["/tmp", {str(tmp_path)!r}, "/", "/usr"]:
            try:
                d = os.open(target, os.O_RDONLY)
            except OSError as e:
                print(target, "open", type(e).__name__)
                continue
            try:
                fd = os.open({name!r}, os.O_WRONLY | os.O_CREAT, dir_fd=d)
                os.write(fd, b"pwned")
                print(target, "created")
            except OSError as e:
                print(target, "create", type(e).__name__)
            open("f", "w").write("x")
            try:
                os.rename("f", {name!r} + "-renamed", dst_dir_fd=d)
                print(target, "renamed")
            except OSError as e:
                print(target, "rename", type(e).__name__)
        """
    )
    r = run_python(code, FAST)
    assert r.status == "passed", r
    out = r.stdout.splitlines()
    assert "/tmp created" in out and "/tmp renamed" in out  # the sandbox's own /tmp: its work tmpfs
    assert f"{tmp_path} open FileNotFoundError" in out  # the host directory does not exist inside
    assert "/ create OSError" in out and "/usr create OSError" in out  # read-only (EROFS)
    for where in (Path("/tmp"), tmp_path, Path("/"), Path("/usr")):
        assert not (where / name).exists() and not (where / f"{name}-renamed").exists()


def test_started_programs_are_contained(tmp_path: Path, server: socket.socket) -> None:
    port = server.getsockname()[1]
    child = (
        "import socket, sys\n"
        "try:\n"
        f"    open({str(tmp_path / 'marker')!r} + sys.argv[1], 'w').write('pwned')\n"
        "    print('child wrote', flush=True)\n"
        "except OSError as e:\n"
        "    print('child write', type(e).__name__, flush=True)\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "    print('child connected', flush=True)\n"
        "except OSError as e:\n"
        "    print('child connect', type(e).__name__, flush=True)\n"
    )
    code = textwrap.dedent(
        f"""
        import _posixsubprocess, os, shlex, subprocess, sys
        CHILD = {child!r}
        argv = [sys.executable, "-c", CHILD, "1"]
        r, w = os.pipe()
        try:  # the call subprocess makes (CPython 3.11-3.13 signature): no audit event
            pid = _posixsubprocess.fork_exec(
                argv, [os.fsencode(sys.executable)], True, (w,), None, None,
                -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False,
            )
            os.waitpid(pid, 0)
        except TypeError:  # another signature: subprocess makes the same call
            subprocess.run(argv)
        os.system(shlex.join([sys.executable, "-c", CHILD, "2"]))
        subprocess.run([sys.executable, "-c", CHILD, "3"])
        """
    )
    r = run_python(code, FAST)
    assert r.status == "passed", r
    lines = r.stdout.splitlines()
    assert lines.count("child write FileNotFoundError") == 3, r.stdout  # each program started, inside
    assert lines.count("child connect ConnectionRefusedError") == 3, r.stdout
    assert not list(tmp_path.glob("marker*")) and not _reached(server)


def test_turning_the_guard_off_gains_nothing(server: socket.socket) -> None:
    port = server.getsockname()[1]
    abstract = f"\0lmforge-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX) as unix_server:
        unix_server.bind(abstract)
        unix_server.listen()
        code = textwrap.dedent(
            f"""
            import socket, sys
            m = sys.modules["__main__"]
            try:  # the review's tampering with the old runner's guard
                m.BLOCKED.clear()
                m.inside = lambda p: True
            except Exception as e:
                print("tamper", type(e).__name__)
            for host in ("127.0.0.1", {_host_address()!r}):
                try:
                    socket.create_connection((host, {port}), timeout=2)
                    print("connected", host)
                except OSError as e:
                    print("connect", host, type(e).__name__)
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect({abstract!r})
                print("connected unix")
            except OSError as e:
                print("connect unix", type(e).__name__)
            try:
                socket.getaddrinfo("example.com", 80)
                print("resolved")
            except OSError as e:
                print("resolve", type(e).__name__)
            """
        )
        r = run_python(code, FAST)
        unix_reached = bool(select.select([unix_server], [], [], 0.2)[0])
    assert r.status == "passed", r
    assert "connected" not in r.stdout and "resolved" not in r.stdout, r.stdout
    assert "connect 127.0.0.1 ConnectionRefusedError" in r.stdout  # the sandbox's own, empty loopback
    assert not _reached(server) and not unix_reached


def test_cannot_signal_the_caller() -> None:
    sibling = subprocess.Popen(["sleep", "60"])
    try:
        code = textwrap.dedent(
            f"""
            import os, signal
            for pid in (os.getppid(), {os.getpid()}, {sibling.pid}, -1):
                try:
                    os.kill(pid, signal.SIGKILL)
                    print("sent", pid == os.getppid() and "parent" or pid)
                except OSError as e:
                    print("kill", type(e).__name__)
            print("alive")
            """
        )
        r = run_python(code, FAST)
        time.sleep(0.2)
        assert sibling.poll() is None  # the caller's other process, same uid when not root
    finally:
        sibling.kill()
        sibling.wait()
    # getppid() is the sandbox's init, which ignores signals from inside its namespace
    assert r.status == "passed" and r.stdout.splitlines()[-1] == "alive", r


DOUBLE_FORK = """
import os, sys, time
if os.fork() == 0:
    os.setsid()  # leaves the process group and the session
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
    os._exit(0)
os.wait()
time.sleep(0.5)
print("forked", flush=True)
"""


@pytest.mark.parametrize("ending", ["exits", "times out"])
def test_setsid_double_fork_does_not_outlive_the_run(ending: str) -> None:
    marker = f"lmforge-orphan-{uuid.uuid4().hex}"
    code = DOUBLE_FORK.format(marker=marker) + ("time.sleep(60)\n" if ending == "times out" else "")
    r = run_python(code, Limits(wall_s=4, cpu_s=2))
    assert r.stdout.strip() == "forked"
    assert r.status == ("passed" if ending == "exits" else "timeout"), r
    assert _processes_with(marker) == []


def test_the_orphan_check_sees_an_unsandboxed_orphan() -> None:
    """The same program without the sandbox leaves its grandchild running: the check above can see it."""
    marker = f"lmforge-orphan-{uuid.uuid4().hex}"
    r = run_python(DOUBLE_FORK.format(marker=marker), Limits(wall_s=4, cpu_s=2), unsafe_exec=True)
    assert r.status == "passed", r
    left = _processes_with(marker)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert len(left) == 1


def test_cannot_read_the_callers_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    source = Path(sandbox.__file__).resolve()  # the project tree
    code = textwrap.dedent(
        f"""
        import os
        for path in ({str(secret)!r}, {str(source)!r}, "/etc/passwd", "/etc/hostname"):
            try:
                print("read", open(path).read()[:20])
            except OSError as e:
                print("hidden", type(e).__name__)
        print(sorted(os.listdir("/")))
        """
    )
    r = run_python(code, FAST)
    assert r.status == "passed", r
    assert "hunter2" not in r.stdout and "read" not in r.stdout, r.stdout
    assert r.stdout.count("hidden FileNotFoundError") == 4


def test_no_root_and_no_capabilities_inside() -> None:
    code = (
        "import os\n"
        "status = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
        "print(os.getuid(), os.getgid(), os.getgroups(), status['CapEff'], status['CapPrm'], status['NoNewPrivs'])"
    )
    r = run_python(code, FAST)
    assert r.status == "passed", r
    uid, gid, groups, eff, prm, nnp = r.stdout.split(maxsplit=5)[:6]
    assert int(eff, 16) == 0 and int(prm, 16) == 0 and nnp.strip() == "1"
    if os.geteuid() == 0:  # a fresh uid, not root's (a user namespace would be uid 0 outside)
        assert int(uid) >= 2_000_000 and int(gid) >= 2_000_000 and groups == "[]"


def test_fork_bomb_is_bounded_and_cleaned_up() -> None:
    marker = f"lmforge-bomb-{uuid.uuid4().hex}"
    code = textwrap.dedent(
        f"""
        import os, sys, time
        children = 0
        for _ in range(200):
            try:
                if os.fork() == 0:
                    os.setsid()
                    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
                children += 1
            except OSError:
                break
        print(children, flush=True)
        time.sleep(60)
        """
    )
    r = run_python(code, Limits(wall_s=4, cpu_s=2, processes=8))
    assert r.status == "timeout", r
    assert int(r.stdout) < 8  # RLIMIT_NPROC stopped the forks
    assert _processes_with(marker) == []
