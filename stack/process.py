"""Detached processes, pid files and bounded stops: the plumbing under `ledgerflow stack`.

The stack outlives the command that starts it, so every service runs in its own session
(`start_new_session`): a Ctrl-C in the terminal or the end of a pytest run does not reach it, and a
stop can signal the whole process group (postgres forks its backends, java its threads).
Pids are written to `.stack/<service>.pid` and re-checked against `/proc/<pid>/cmdline` before any
signal is sent, so a stale pid file never makes us kill an unrelated process that reused the pid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator, Mapping, Sequence

POLL_INTERVAL_S = 0.1
FREE_PORT_ATTEMPTS_MAX = 20
KILL_WAIT_S = 10.0  # after SIGKILL the kernel frees the process almost at once; 10 s is generous
LOG_TAIL_LINES = 40
LOCK_TIMEOUT_S = 600.0  # a concurrent `up` may be fetching jars; wait for it, but not forever

# Children this interpreter started; kept so they can be reaped (no zombies, no ResourceWarning).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class StackError(RuntimeError):
    """A service could not be started, reached or stopped; the message says what to do."""


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_os_user(name: str) -> OsUser:
    """Return the unprivileged system user that runs PostgreSQL, creating it when missing.

    PostgreSQL refuses to run as root, and a dedicated user keeps the cluster's files away from
    anyone else's. Only root can create it, and only root needs it.
    """
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            raise StackError(
                f"user {name!r} is missing and useradd is not installed; create the user or set "
                "LEDGERFLOW_STACK_POSTGRES_OS_USER to an existing unprivileged user"
            ) from None
        result = subprocess.run(
            [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", name],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if result.returncode not in {0, 9}:  # 9: created concurrently
            raise StackError(f"useradd {name} failed: {result.stderr.strip()}") from None
        entry = pwd.getpwnam(name)
    return OsUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def can_traverse(user: OsUser, path: Path) -> bool:
    """True when `user` can reach `path` (execute permission on every existing ancestor)."""
    for folder in (path, *path.parents):
        if not folder.exists():
            continue
        st = folder.stat()
        if st.st_uid == user.uid:
            bit = 0o100
        elif st.st_gid == user.gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return False
    return True


def chown_tree(path: Path, user: OsUser) -> None:
    os.chown(path, user.uid, user.gid)
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.chown(Path(root) / name, user.uid, user.gid, follow_symlinks=False)


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def write_pid(path: Path, pid: int) -> None:
    tmp = path.with_suffix(".pid.tmp")
    tmp.write_text(f"{pid}\n", encoding="ascii")
    tmp.replace(path)


def remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may contain spaces; the state follows the last ')'.
    return stat.rsplit(")", 1)[-1].split()[0]


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie counts as gone (it holds no port and no file)."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]
        return False
    if child is None:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be ours
    state = _proc_state(pid)
    return state is not None and state not in {"Z", "X", "x"}


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def live_pid(pid_file: Path, marker: str) -> int | None:
    """The pid recorded in `pid_file` if that process is alive and its command line has `marker`.

    Removes a stale pid file, so `status` and `up` see the truth after a crash or a reboot.
    """
    pid = read_pid(pid_file)
    if pid is None:
        return None
    if pid_alive(pid) and any(marker in part for part in cmdline(pid)):
        return pid
    remove_file(pid_file)
    return None


def spawn_detached(
    argv: Sequence[str],
    *,
    log_path: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    user: OsUser | None = None,
) -> int:
    """Start `argv` in a new session with output appended to `log_path`; return its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes]
    with log_path.open("ab") as log:
        if user is not None:
            os.chown(log_path, user.uid, user.gid)
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def run_checked(
    argv: Sequence[str],
    *,
    timeout_s: float,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    user: OsUser | None = None,
) -> str:
    """Run a short helper command to completion; raise StackError with its output on failure."""
    try:
        result = subprocess.run(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{what} did not finish within {timeout_s:.0f} s") from exc
    except FileNotFoundError as exc:
        raise StackError(f"{what}: {argv[0]} not found") from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-LOG_TAIL_LINES:]
        raise StackError(f"{what} failed (exit {result.returncode}):\n" + "\n".join(output))
    return result.stdout


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by `pid` (our services are session leaders), else `pid`."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (postgres backends run in sessions of their own,
    so signalling the postmaster's group does not reach them)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[-1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_process(pid: int, *, first_signal: signal.Signals, timeout_s: float) -> bool:
    """Ask politely with `first_signal`, then SIGKILL the group after `timeout_s`.

    Children that outlive their parent are killed too, so `down` leaves no process behind.
    Returns True when the process stopped on the first signal, False when it had to be killed.
    """
    children = descendants(pid)
    _signal_group(pid, first_signal)
    graceful = wait_gone(pid, timeout_s)
    if not graceful:
        _signal_group(pid, signal.SIGKILL)
        if not wait_gone(pid, KILL_WAIT_S):
            raise StackError(f"process {pid} survived SIGKILL for {KILL_WAIT_S:.0f} s")
    for child in children:
        if not wait_gone(child, 0 if not graceful else KILL_WAIT_S):
            _signal_group(child, signal.SIGKILL)
            if not wait_gone(child, KILL_WAIT_S):
                raise StackError(f"process {child} survived SIGKILL for {KILL_WAIT_S:.0f} s")
    return graceful


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log, for error messages (bounded read of the file's end)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(data.splitlines()[-lines:])


def free_port(host: str, avoid: Collection[int] = ()) -> int:
    """A port nothing listens on now (the kernel's choice), other than those in `avoid`."""
    for _ in range(FREE_PORT_ATTEMPTS_MAX):
        with socket.socket() as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in avoid:
            return port
    raise StackError(f"no free port on {host} after {FREE_PORT_ATTEMPTS_MAX} attempts")


def port_taken(host: str, port: int) -> bool:
    """True when a server could not listen on host:port now: something listens there, or the
    port is the local end of a connection (a default port can sit in the ephemeral range).
    Tried as PostgreSQL and Java bind, with SO_REUSEADDR, so TIME_WAIT does not count."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_in_use(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Serialise `up`/`down` of one stack folder across processes (two pytest runs, a CLI)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in {errno.EAGAIN, errno.EACCES}:
                    raise
                if time.monotonic() >= deadline:
                    raise StackError(f"{path} is held by another process") from exc
                time.sleep(POLL_INTERVAL_S)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
