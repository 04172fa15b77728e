"""Run model-written Python in a separate, limited process: one sample's crash never touches another.

``run_python(code, limits)`` writes ``code`` to ``program.py`` in a fresh temporary directory and runs
it with the same interpreter (``python -I``, isolated mode: no user site, no ``PYTHON*`` variables, an
empty environment but ``PATH`` and ``HOME`` = the directory). The result is a ``SandboxResult`` whose
``status`` is

- ``passed``: the program exited with status 0;
- ``failed``: it raised (an ``AssertionError`` from a test, a ``TypeError``, ...): ``reason`` is the
  exception's last traceback line;
- ``timeout``: it ran past ``Limits.wall_s`` (wall clock) or ``Limits.cpu_s`` (CPU time, ``SIGXCPU``);
- ``error``: it was stopped by the sandbox: memory limit, file-size limit, a blocked operation (network,
  writing outside its directory, starting programs), killed by a signal (a segfault), or it could not
  be started.

Isolation, in two modes chosen by ``isolation`` (default ``"auto"``: ``"kernel"`` when running as root
on Linux, else ``"hook"``):

``kernel`` (as root): the child calls ``unshare(CLONE_NEWNS | CLONE_NEWNET)``: a new network namespace
  has only a loopback device that is down, so no connection leaves the process, whatever Python does.
  It then switches to a fresh unprivileged uid/gid (one per run, not in ``/etc/passwd``; no
  supplementary groups), so the kernel refuses writes outside the working directory (owned by that uid)
  except in world-writable directories such as ``/tmp``; and ``RLIMIT_NPROC``, which the kernel never
  applies to root, counts only that uid's processes, which bounds a fork bomb. A directory on the
  interpreter's path that others cannot enter (``/root`` when Python lives under ``/root/.pyenv``) is
  replaced *inside the private mount namespace* by a read-only-to-others tmpfs holding just the
  interpreter's directory, so the unprivileged uid can run Python; nothing changes outside.
  After the run every process of that uid is killed (``kill(-1, SIGKILL)`` sent as that uid), so a
  child that left the process group (``setsid``) dies too.
``hook`` (not root): same uid as the caller; ``RLIMIT_NPROC`` is set to the caller's current process
  count plus ``Limits.processes`` (the limit is per user); network and writes are refused only by the
  Python audit hook below, which ``ctypes`` or a C extension can bypass: a weaker guarantee.

In both modes a Python audit hook (PEP 578, installed before the program runs) refuses: socket
creation, connection and name lookup; opening a file for writing, and deleting, renaming, creating
directories or changing modes, outside the working directory (``/dev/null`` allowed); ``os.system``,
``subprocess`` and ``exec*``/``spawn*`` of other programs; and ``ctypes`` (which would bypass the hook).
A refused operation raises ``PermissionError`` and marks the sample as ``error`` even if the program
catches it. ``os.fork`` is not refused (the kernel limit is what bounds a fork bomb).

Resource limits (``setrlimit``, per process): ``RLIMIT_CPU`` (``cpu_s``), ``RLIMIT_AS`` (``memory_mb``),
``RLIMIT_NPROC`` (``processes``), ``RLIMIT_FSIZE`` (``file_mb``), ``RLIMIT_CORE`` 0. The program runs
in its own session; on the wall-clock limit its whole process group is killed. Standard output and
error go to files in a directory the program cannot see, bounded by ``RLIMIT_FSIZE``; the result keeps
their first 4 KB.

Not covered: a cgroup is not used, so ``RLIMIT_AS`` bounds each process, not the tree (at most
``processes`` x ``memory_mb``); reading files is allowed (the program sees the filesystem read-only
except its directory); in ``kernel`` mode world-writable directories (``/tmp``) are protected by the
audit hook only.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

STATUSES = ("passed", "failed", "timeout", "error")

# exit codes the runner uses to say why it stopped the program
_EXIT_VIOLATION, _EXIT_MEMORY, _EXIT_FSIZE, _EXIT_SETUP = 70, 71, 72, 73
_OUTPUT_KEEP = 4096
_UID_BASE = 2_000_000  # fresh uids for kernel mode: 2,000,000 + 1000 * (pid % 1000) + counter
_counter = itertools.count()


@dataclass(frozen=True)
class Limits:
    """Per-sample limits."""

    wall_s: float = 10.0  # wall-clock seconds, then the process group is killed
    cpu_s: int = 5  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 512  # address space per process (RLIMIT_AS)
    processes: int = 16  # processes of the sandbox uid (RLIMIT_NPROC)
    file_mb: int = 16  # largest file it may write (RLIMIT_FSIZE), stdout/stderr included

    def validate(self) -> None:
        for name in ("wall_s", "cpu_s", "memory_mb", "processes", "file_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")


DEFAULT_LIMITS = Limits()


@dataclass
class SandboxResult:
    """Outcome of one run (``status`` in ``STATUSES``)."""

    status: str
    reason: str = ""
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    isolation: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def default_isolation() -> str:
    """``"kernel"`` when root on Linux (namespaces, uid switch), else ``"hook"``."""
    return "kernel" if sys.platform == "linux" and os.geteuid() == 0 else "hook"


def run_python(
    code: str, limits: Limits = DEFAULT_LIMITS, *, isolation: str = "auto", python_guard: bool = True
) -> SandboxResult:
    """Run ``code`` as ``program.py`` in a fresh directory under ``limits`` (module docstring).

    Args:
        code: the whole program (for code generation: prompt + completion + tests + the test call).
        limits: resource limits.
        isolation: ``"auto"``, ``"kernel"`` (root only) or ``"hook"``.
        python_guard: install the audit hook; ``False`` only to test what the kernel alone enforces.

    Raises:
        ValueError: a bad limit or isolation mode; ``"kernel"`` when not root.
    """
    limits.validate()
    mode = default_isolation() if isolation == "auto" else isolation
    if mode not in ("kernel", "hook"):
        raise ValueError(f"isolation: expected auto, kernel or hook, got {isolation!r}")
    if mode == "kernel" and (os.geteuid() != 0 or sys.platform != "linux"):
        raise ValueError("isolation 'kernel' needs root on Linux; use 'hook'")
    base = Path(tempfile.mkdtemp(prefix="lmforge-sandbox-"))
    work, out_dir = base / "work", base / "out"
    work.mkdir()
    out_dir.mkdir(mode=0o700)
    uid = _UID_BASE + 1000 * (os.getpid() % 1000) + next(_counter) % 1000 if mode == "kernel" else -1
    try:
        (work / "program.py").write_text(code, encoding="utf-8")
        if mode == "kernel":
            os.chmod(base, 0o711)
            for path in (work, work / "program.py"):
                os.chown(path, uid, uid)
            os.chmod(work, 0o700)
        return _run(work, out_dir, limits, mode, uid, python_guard)
    finally:
        if mode == "kernel":
            _kill_uid(uid)
        shutil.rmtree(base, ignore_errors=True)


def _run(work: Path, out_dir: Path, limits: Limits, mode: str, uid: int, guard: bool) -> SandboxResult:
    nproc = limits.processes if mode == "kernel" else _user_processes() + limits.processes
    setup = {
        "work": str(work),
        "mode": mode,
        "uid": uid,
        "guard": guard,
        "cpu": limits.cpu_s,
        "mem": limits.memory_mb * 2**20,
        "nproc": nproc,
        "fsize": limits.file_mb * 2**20,
        "codes": [_EXIT_VIOLATION, _EXIT_MEMORY, _EXIT_FSIZE, _EXIT_SETUP],
    }
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8"}
    start = time.monotonic()
    with open(out_dir / "stdout", "wb") as fo, open(out_dir / "stderr", "wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _RUNNER, json.dumps(setup)],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fo,
            stderr=fe,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=limits.wall_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            rc = proc.wait()
    seconds = time.monotonic() - start
    _kill_group(proc.pid)  # children left behind in the group
    stdout = (out_dir / "stdout").read_bytes()[:_OUTPUT_KEEP].decode("utf-8", "replace")
    stderr_all = (out_dir / "stderr").read_bytes()
    stderr = stderr_all[-_OUTPUT_KEEP:].decode("utf-8", "replace")
    status, reason = _classify(rc, timed_out, stderr, limits)
    log.debug("sandbox %s (%s) in %.2fs: %s", status, mode, seconds, reason)
    return SandboxResult(status, reason, rc, stdout, stderr, seconds, mode)


def _classify(rc: int, timed_out: bool, stderr: str, limits: Limits) -> tuple[str, str]:
    last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    if timed_out:
        return "timeout", f"wall-clock limit {limits.wall_s}s"
    if rc == 0:
        return "passed", ""
    if rc in (-signal.SIGXCPU, -signal.SIGKILL) and "MemoryError" not in stderr:
        return "timeout", f"CPU-time limit {limits.cpu_s}s (signal {-rc})"
    if rc == _EXIT_VIOLATION:
        return "error", f"sandbox refused: {last.removeprefix('lmforge-sandbox: ')}"
    if rc == _EXIT_MEMORY:
        return "error", f"memory limit {limits.memory_mb} MB"
    if rc == _EXIT_FSIZE:
        return "error", f"file-size limit {limits.file_mb} MB"
    if rc == _EXIT_SETUP:
        return "error", f"sandbox setup failed: {last}"
    if rc < 0:
        return "error", f"killed by signal {signal.Signals(-rc).name}"
    return "failed", last or f"exit status {rc}"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int) -> None:
    """Kill every process of ``uid``: ``kill(-1, SIGKILL)`` sent as that uid reaches all of them; repeated
    (up to 2 s) while any is still alive, so processes forked during a round die in the next."""

    def become() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    deadline = time.monotonic() + 2.0
    while True:
        subprocess.run(["/bin/kill", "-KILL", "-1"], preexec_fn=become, capture_output=True, check=False)
        if not live_processes(uid) or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def live_processes(uid: int) -> list[int]:
    """Pids of the processes of ``uid`` that are not zombies (read from ``/proc``)."""
    pids = []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid != uid:
                    continue
                state = Path(entry.path, "stat").read_text().rpartition(")")[2].split()[0]
            except (OSError, IndexError):
                continue
            if state not in ("Z", "X"):
                pids.append(int(entry.name))
    return pids


def _user_processes() -> int:
    uid = os.getuid()
    count = 0
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                pass
    return count or 256


# The child: runs as ``python -I -c _RUNNER setup-json`` in the working directory. Everything it needs is
# imported before the uid switch and the limits. Kept as source text (not a module) so the interpreter
# does not need to import lmforge, which an unprivileged uid may not be able to read.
_RUNNER = r"""
import ctypes, ctypes.util, json, os, resource, sys, traceback
cfg = json.loads(sys.argv[1])
VIOLATION, MEMORY, FSIZE, SETUP = cfg["codes"]
work = cfg["work"]

def setup_kernel():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    def check(ret, what):
        if ret != 0:
            raise OSError(ctypes.get_errno(), what + ": " + os.strerror(ctypes.get_errno()))
    check(libc.unshare(0x00020000 | 0x40000000), "unshare(CLONE_NEWNS|CLONE_NEWNET)")
    MS_REC, MS_PRIVATE, MS_BIND, MS_MOVE = 16384, 1 << 18, 4096, 8192
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    # a directory on the interpreter's path that others cannot enter: show only the path to Python
    for prefix in {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}:
        parts = prefix.strip("/").split("/")
        for i in range(1, len(parts)):
            closed = "/" + "/".join(parts[:i])
            if os.stat(closed).st_mode & 0o001:
                continue
            inner = closed + "/" + parts[i]
            hold = work + "/.hold"
            os.mkdir(hold)
            check(libc.mount(inner.encode(), hold.encode(), None, MS_BIND | MS_REC, None), "bind " + inner)
            check(libc.mount(b"tmpfs", closed.encode(), b"tmpfs", 0, b"mode=755,size=64k"), "tmpfs " + closed)
            os.mkdir(inner)
            check(libc.mount(hold.encode(), inner.encode(), None, MS_MOVE, None), "move " + inner)
            os.rmdir(hold)
            break
    uid = cfg["uid"]
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)

try:
    if cfg["mode"] == "kernel":
        setup_kernel()
    else:
        resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu"], cfg["cpu"] + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["fsize"], cfg["fsize"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["mem"], cfg["mem"]))
    source = open(work + "/program.py", encoding="utf-8").read()
    code = compile(source, "program.py", "exec")
except Exception as e:
    if isinstance(e, SyntaxError):
        traceback.print_exc(limit=0)
        sys.exit(1)
    print("lmforge-sandbox: setup: %s: %s" % (type(e).__name__, e), file=sys.stderr)
    sys.exit(SETUP)

violations = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink",
               "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
BLOCKED = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
           "os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "pty.spawn",
           "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function", "os.startfile"}

def inside(path):
    if isinstance(path, int):
        return True
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    full = os.path.realpath(os.path.join(work, str(path)))
    return full == work or full.startswith(work + "/") or full == "/dev/null"

def refuse(what):
    violations.append(what)
    raise PermissionError("lmforge sandbox: " + what)

def hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & WRITE_FLAGS)
        if writing and not inside(path):
            refuse("write outside the working directory: %s" % (path,))
    elif event in PATH_EVENTS:
        for path in args[:2]:
            if isinstance(path, (str, bytes, os.PathLike)) and not inside(os.fspath(path)):
                refuse("%s outside the working directory: %s" % (event, path))
    elif event in BLOCKED:
        refuse("%s is not allowed" % event)

def finish(status):
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    if violations:
        os.write(2, ("\nlmforge-sandbox: " + violations[0] + "\n").encode())
        os._exit(VIOLATION)
    os._exit(status)

sys.dont_write_bytecode = True
if cfg["guard"]:
    sys.addaudithook(hook)
sys.argv = ["program.py"]
sys.path.insert(0, work)
namespace = {"__name__": "__main__", "__file__": work + "/program.py", "__builtins__": __builtins__}
try:
    exec(code, namespace)
except SystemExit as e:
    code = e.code
    if code is None or code == 0:
        finish(0)
    if not isinstance(code, int):
        print(code, file=sys.stderr)
    finish(code if isinstance(code, int) else 1)
except MemoryError:
    finish(MEMORY)
except BaseException as e:
    if isinstance(e, OSError) and e.errno == 27:  # EFBIG: RLIMIT_FSIZE (Python ignores SIGXFSZ)
        finish(FSIZE)
    traceback.print_exc()
    finish(1)
finish(0)
"""
