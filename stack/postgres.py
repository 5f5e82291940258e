"""A private PostgreSQL cluster under `.stack/postgres`, started from the installed server binaries.

Why not the machine's own PostgreSQL: tests and the demo need a superuser, fixed roles and a
port nobody else uses, and must not touch a developer's data. initdb refuses to run as root, so
as root the cluster belongs to an unprivileged system user (`ledgerflow` by default).
Durability settings stay at PostgreSQL's defaults (fsync on): benchmarks run here must be honest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

import asyncpg

from ledgerflow.stack import tls
from ledgerflow.stack.process import (
    OsUser,
    StackError,
    can_traverse,
    chown_tree,
    cmdline,
    ensure_os_user,
    is_root,
    live_pid,
    pid_alive,
    port_taken,
    remove_file,
    run_checked,
    spawn_detached,
    stop_process,
    tail,
    write_pid,
)
from ledgerflow.stack.settings import (
    APP_PASSWORD,
    APP_ROLE,
    DATABASE_NAME,
    OWNER_PASSWORD,
    OWNER_ROLE,
    READER_PASSWORD,
    READER_ROLE,
    SUPERUSER,
    SUPERUSER_PASSWORD,
)

if TYPE_CHECKING:
    from ledgerflow.stack.settings import StackSettings

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, postgres) were not found. Install them, e.g. "
    "`apt-get install postgresql-15` (Debian/Ubuntu) or `dnf install postgresql15-server`, "
    "or point LEDGERFLOW_STACK_POSTGRES_BIN_DIR at the folder that holds initdb and postgres."
)
CONNECT_TIMEOUT_S = 3.0
INITDB_TIMEOUT_S = 120.0
TLS_CERT = "ledgerflow-server.crt"  # copied into the data folder in secure mode
TLS_KEY = "ledgerflow-server.key"
UNIX_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for ".s.PGSQL.<port>"
# One key for every bootstrap so concurrent `up`s and fixtures never race on CREATE ROLE.
BOOTSTRAP_LOCK_KEY = 0x4C46_5354  # "LFST"
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class PostgresPaths:
    root: Path  # owned by the cluster's OS user
    data: Path
    socket_dir: Path
    log: Path
    pid_file: Path  # ours (in .stack), not PostgreSQL's postmaster.pid


def find_bin_dir(settings: StackSettings) -> Path:
    """Locate initdb/postgres: explicit setting, then `pg_config --bindir`, then the newest
    /usr/lib/postgresql/<major>/bin."""
    candidates: list[Path] = []
    if settings.postgres_bin_dir is not None:
        candidates.append(settings.postgres_bin_dir.expanduser())
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            candidates.append(Path(out))

    def major(path: Path) -> int:
        name = path.parent.name
        return int(name) if name.isdigit() else 0

    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True))
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise StackError(INSTALL_HINT)


def server_major(bin_dir: Path) -> str:
    out = run_checked([str(bin_dir / "postgres"), "--version"], timeout_s=10, what="postgres")
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    if match is None:
        raise StackError(f"cannot read the PostgreSQL version from {out!r}")
    return match.group(1)


def os_user(settings: StackSettings, *, create: bool = True) -> OsUser | None:
    """The user the server runs as: ourselves (None), or as root the dedicated system user.

    `status` and `down` pass create=False: looking must not add users to the machine.
    """
    if not is_root():
        return None
    if create:
        return ensure_os_user(settings.postgres_os_user)
    try:
        entry = pwd.getpwnam(settings.postgres_os_user)
    except KeyError:
        return None
    return OsUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def paths(settings: StackSettings, user: OsUser | None) -> PostgresPaths:
    """Cluster files live in `.stack/postgres` when the server's user can reach that folder.

    A checkout under /root (mode 0700) is unreachable for the unprivileged user; rather than
    loosen /root, the cluster then lives in /var/tmp, in a folder named after the stack folder.
    """
    stack_dir = settings.stack_dir
    root = stack_dir / "postgres"
    if user is not None and not can_traverse(user, stack_dir):
        digest = hashlib.sha256(str(stack_dir).encode()).hexdigest()[:12]
        root = Path("/var/tmp") / f"ledgerflow-postgres-{digest}"  # noqa: S108 - see docstring
    socket_dir = root / "run"
    if len(str(socket_dir)) > UNIX_SOCKET_PATH_MAX:
        socket_dir = Path(tempfile.gettempdir()) / f"lf-pg-{settings.postgres_port}"
    return PostgresPaths(
        root=root,
        data=root / "data",
        socket_dir=socket_dir,
        log=root / "postgres.log",
        pid_file=stack_dir / "postgres.pid",
    )


def url(settings: StackSettings, user: str, password: str, database: str = DATABASE_NAME) -> str:
    """In secure mode the URL demands TLS and checks the server against the stack's CA."""
    query = ""
    if settings.secure:
        ca = tls.tls_files(settings.stack_dir).ca_cert
        query = "?" + urlencode({"sslmode": "verify-full", "sslrootcert": str(ca)})
    return (
        f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}"
        f"@{settings.host}:{settings.postgres_port}/{quote(database, safe='')}{query}"
    )


def admin_url(settings: StackSettings) -> str:
    return url(settings, SUPERUSER, SUPERUSER_PASSWORD.get_secret_value(), "postgres")


def owner_url(settings: StackSettings) -> str:
    return url(settings, OWNER_ROLE, OWNER_PASSWORD.get_secret_value())


def app_url(settings: StackSettings) -> str:
    return url(settings, APP_ROLE, APP_PASSWORD.get_secret_value())


def reader_url(settings: StackSettings) -> str:
    return url(settings, READER_ROLE, READER_PASSWORD.get_secret_value())


def _server_env() -> dict[str, str]:
    """A clean environment: no PG* variables or secrets of the caller leak into the server."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}


def _prepare_dir(path: Path, user: OsUser | None, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if user is not None:
        os.chown(path, user.uid, user.gid)


def _check_not_planted(path: Path, user: OsUser | None) -> None:
    """Refuse a cluster folder someone else made (the /var/tmp fallback is a shared place):
    as root we would otherwise chown whatever a symlink there points at."""
    if path.is_symlink():
        raise StackError(f"{path} is a symlink; remove it or set LEDGERFLOW_STACK_DIR elsewhere")
    if path.exists():
        owners = {0, os.geteuid()} | ({user.uid} if user else set())
        if path.stat().st_uid not in owners:
            raise StackError(f"{path} belongs to another user; remove it or move the stack")


def init_cluster(bin_dir: Path, p: PostgresPaths, user: OsUser | None) -> bool:
    """Create the cluster once (initdb); return False when it already exists."""
    version_file = p.data / "PG_VERSION"
    if version_file.is_file():
        have = version_file.read_text(encoding="ascii").strip()
        want = server_major(bin_dir)
        if have != want:
            raise StackError(
                f"{p.data} holds a PostgreSQL {have} cluster but the binaries in {bin_dir} are "
                f"{want}; run `ledgerflow stack down` and delete {p.root} to start afresh"
            )
        return False
    _check_not_planted(p.root, user)
    _prepare_dir(p.root, user, 0o755)
    if p.data.exists():  # a half-made cluster from an interrupted initdb: start over
        shutil.rmtree(p.data)
    _prepare_dir(p.data, user, 0o700)
    pwfile = p.root / ".initdb-pw"
    pwfile.write_text(SUPERUSER_PASSWORD.get_secret_value() + "\n", encoding="utf-8")
    pwfile.chmod(0o600)
    if user is not None:
        os.chown(pwfile, user.uid, user.gid)
    try:
        run_checked(
            [
                str(bin_dir / "initdb"),
                "--pgdata", str(p.data),
                "--username", SUPERUSER,
                "--pwfile", str(pwfile),
                "--auth", "scram-sha-256",
                "--encoding", "UTF8",
                "--locale", "C",
            ],
            timeout_s=INITDB_TIMEOUT_S,
            what="initdb",
            cwd=p.root,
            env=_server_env(),
            user=user,
        )  # fmt: skip
    finally:
        remove_file(pwfile)
    return True


def write_config(settings: StackSettings, p: PostgresPaths, user: OsUser | None) -> None:
    """(Re)write our settings on every start, so a changed port or bound takes effect."""
    _prepare_dir(p.socket_dir, user, 0o755)
    conf = f"""\
# Written by `ledgerflow stack up` on every start; edit StackSettings, not this file.
listen_addresses = '{settings.host}'
port = {settings.postgres_port}
unix_socket_directories = '{p.socket_dir}'
max_connections = {settings.postgres_max_connections}
shared_buffers = 128MB
password_encryption = 'scram-sha-256'
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
logging_collector = off
# Durability stays at the defaults (fsync, synchronous_commit, full_page_writes on).
"""
    # Secure mode: TCP clients must use TLS (hostssl only); the socket stays for local admin.
    tcp = "host   "
    if settings.secure:
        tcp = "hostssl"
        conf += f"""\
ssl = on
ssl_cert_file = '{TLS_CERT}'
ssl_key_file = '{TLS_KEY}'
ssl_min_protocol_version = 'TLSv1.2'
"""
    (p.data / "ledgerflow.conf").write_text(conf, encoding="utf-8")
    hba = f"""\
# Written by `ledgerflow stack up`: password (SCRAM) auth only, loopback and the private socket.
local   all   all                  scram-sha-256
{tcp} all   all   127.0.0.1/32   scram-sha-256
{tcp} all   all   ::1/128        scram-sha-256
"""
    (p.data / "pg_hba.conf").write_text(hba, encoding="utf-8")
    main_conf = p.data / "postgresql.conf"
    include = "include_if_exists = 'ledgerflow.conf'"
    text = main_conf.read_text(encoding="utf-8")
    if include not in text:
        main_conf.write_text(text + f"\n{include}\n", encoding="utf-8")
    if user is not None:
        for name in ("ledgerflow.conf", "pg_hba.conf", "postgresql.conf"):
            os.chown(p.data / name, user.uid, user.gid)


def install_tls(settings: StackSettings, p: PostgresPaths, user: OsUser | None) -> None:
    """The server certificate and key from the stack CA, inside the data folder: PostgreSQL
    refuses a key that its own user does not own or that others can read."""
    files = tls.ensure_tls(settings.stack_dir, settings.host, ())
    pem = files.identity(tls.POSTGRES_NAME)
    for source, name, mode in ((pem.cert, TLS_CERT, 0o644), (pem.key, TLS_KEY, 0o600)):
        target = p.data / name
        shutil.copyfile(source, target)
        target.chmod(mode)
        if user is not None:
            os.chown(target, user.uid, user.gid)


def running_pid(settings: StackSettings) -> int | None:
    """The postmaster's pid if our cluster runs (recovers a lost .stack/postgres.pid)."""
    p = paths(settings, os_user(settings, create=False))
    pid = live_pid(p.pid_file, str(p.data))
    if pid is not None:
        return pid
    postmaster = p.data / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        candidate = int(postmaster.read_text(encoding="ascii").splitlines()[0])
        if pid_alive(candidate) and str(p.data) in cmdline(candidate):
            write_pid(p.pid_file, candidate)
            return candidate
    return None


async def is_healthy(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    try:
        await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT_S)
    finally:
        await conn.close(timeout=CONNECT_TIMEOUT_S)
    return True


async def wait_ready(settings: StackSettings, pid: int, log: Path, deadline: float) -> None:
    """Poll until the superuser can run a query; fail early if the postmaster dies."""
    dsn = admin_url(settings)
    while True:
        if not pid_alive(pid):
            raise StackError(
                f"PostgreSQL exited during start-up. Last lines of {log}:\n{tail(log)}"
            )
        if await is_healthy(dsn):
            return
        if time.monotonic() >= deadline:
            raise StackError(
                f"PostgreSQL did not accept connections on {settings.host}:"
                f"{settings.postgres_port} in time. Last lines of {log}:\n{tail(log)}"
            )
        await asyncio.sleep(0.2)


def _quote_ident(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return f'"{name}"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def ensure_roles(conn: asyncpg.Connection) -> None:
    """Create or repair the owner, app and reader roles (idempotent; safe from concurrent callers).

    The owner migrates and owns the ledger; the app role owns nothing, so grants and revokes
    actually bind it (a table's owner keeps its rights whatever is revoked).
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", BOOTSTRAP_LOCK_KEY)
        for role, password, options in (
            (OWNER_ROLE, OWNER_PASSWORD, "LOGIN CREATEDB NOCREATEROLE NOSUPERUSER"),
            (APP_ROLE, APP_PASSWORD, "LOGIN NOCREATEDB NOCREATEROLE NOSUPERUSER"),
            (READER_ROLE, READER_PASSWORD, "LOGIN NOCREATEDB NOCREATEROLE NOSUPERUSER"),
        ):
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            verb = "ALTER" if exists else "CREATE"
            # Utility statements take no bind parameters; the values are module constants.
            await conn.execute(
                f"{verb} ROLE {_quote_ident(role)} {options} "
                f"PASSWORD {_quote_literal(password.get_secret_value())}"
            )


async def ensure_database(conn: asyncpg.Connection, name: str, owner: str) -> bool:
    """CREATE DATABASE `name` OWNER `owner` unless it exists; True when created."""
    await conn.execute("SELECT pg_advisory_lock($1)", BOOTSTRAP_LOCK_KEY)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        await conn.execute(f"CREATE DATABASE {_quote_ident(name)} OWNER {_quote_ident(owner)}")
        return True
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", BOOTSTRAP_LOCK_KEY)


async def bootstrap(admin_dsn: str) -> None:
    """Roles `ledgerflow_owner`/`ledgerflow_app` and database `ledgerflow`, idempotently."""
    conn = await asyncpg.connect(admin_dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        await ensure_roles(conn)
        await ensure_database(conn, DATABASE_NAME, OWNER_ROLE)
    finally:
        await conn.close(timeout=CONNECT_TIMEOUT_S)


async def start(settings: StackSettings) -> tuple[int, bool]:
    """Start the cluster unless it runs; return (pid, started_now). Waits until it is usable.

    The roles and the database are (re)checked on every call: cheap, and it repairs a cluster
    whose start was interrupted before its bootstrap.
    """
    existing = running_pid(settings)
    if existing is not None:
        p = paths(settings, os_user(settings, create=False))
        await wait_ready(settings, existing, p.log, time.monotonic() + settings.start_timeout_s)
        await bootstrap(admin_url(settings))
        return existing, False
    if port_taken(settings.host, settings.postgres_port):
        raise StackError(
            f"{settings.host}:{settings.postgres_port} is taken by another process; "
            "set LEDGERFLOW_STACK_POSTGRES_PORT to a free port"
        )
    bin_dir = find_bin_dir(settings)
    user = os_user(settings)
    p = paths(settings, user)
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(init_cluster, bin_dir, p, user)
    if settings.secure:
        install_tls(settings, p, user)
    write_config(settings, p, user)
    if user is not None:
        chown_tree(p.data, user)  # repairs files left behind by a run as another user
    pid = spawn_detached(
        [str(bin_dir / "postgres"), "-D", str(p.data)],
        log_path=p.log,
        cwd=p.root,
        env=_server_env(),
        user=user,
    )
    write_pid(p.pid_file, pid)
    deadline = time.monotonic() + settings.start_timeout_s
    await wait_ready(settings, pid, p.log, deadline)
    await bootstrap(admin_url(settings))
    return pid, True


def stop(settings: StackSettings) -> int | None:
    """Fast shutdown (SIGINT: roll back sessions, checkpoint, exit); SIGKILL after the bound.

    SIGTERM would be PostgreSQL's "smart" mode, which waits for every client to disconnect —
    a forgotten pool would keep the stack up forever. Returns the pid that was stopped.
    """
    pid = running_pid(settings)
    p = paths(settings, os_user(settings, create=False))
    if pid is not None:
        stop_process(pid, first_signal=signal.SIGINT, timeout_s=settings.stop_timeout_s)
    remove_file(p.pid_file)
    return pid


def log_path(settings: StackSettings) -> Path:
    return paths(settings, os_user(settings, create=False)).log
