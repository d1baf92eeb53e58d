"""The PostgreSQL server a benchmark runs on: a fresh database, its processes' CPU, its counters.

`benchmarks.cpu_split --database-url postgresql+asyncpg://...` uses these to run a
system on PostgreSQL and to count what the server costs per turn:

- `create_database`: a new, uniquely named database on the URL's server (one per run,
  so nothing of an earlier run is in its tables or its statistics);
- `ServerCPU`: the user + system CPU seconds of the server's processes (the postmaster
  found by its listening port, or given by pid, and all its children: backends,
  checkpointer, WAL writer, autovacuum; backends that have exited count through the
  postmaster's children times). That is the whole server, every database on it: give
  a benchmark a server of its own;
- `read_counters` / `settle`: `pg_stat_database`'s commits and row counts of one
  database, read over a connection to another one (`ADMIN_DATABASE`) so the reads
  are not counted in it. PostgreSQL (15 and later) publishes a backend's counters at
  most once a second while it is busy, and an idle backend's last ones only about
  10 s later (`PGSTAT_IDLE_INTERVAL`), so a reading right after a load misses its end:
  `settle` polls until the counters stop moving for longer than that.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import psutil  # type: ignore[import-untyped]

T = TypeVar("T")

ADMIN_DATABASE = "postgres"  # every server has it; the counters are read from there
COUNTERS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted")
STATS_IDLE_FLUSH_S = 10.0  # PostgreSQL's PGSTAT_IDLE_INTERVAL
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def is_postgres(url: str) -> bool:
    """True for a PostgreSQL URL (`postgresql://`, `postgresql+asyncpg://`, ...)."""
    return url.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


@dataclass(frozen=True)
class Server:
    """Where a PostgreSQL URL points: host, port and database (the rest stays in the URL)."""

    url: str
    host: str
    port: int
    database: str

    @classmethod
    def from_url(cls, url: str) -> Server:
        """Parse a SQLAlchemy PostgreSQL URL (a missing host or port: localhost, 5432)."""
        from sqlalchemy.engine import make_url

        if not is_postgres(url):
            raise ValueError(f"not a PostgreSQL URL: {url.split('://', 1)[0]}://...")
        parsed = make_url(url)
        return cls(
            url=url,
            host=parsed.host or "localhost",
            port=parsed.port or 5432,
            database=parsed.database or ADMIN_DATABASE,
        )

    def with_database(self, database: str) -> Server:
        """The same server and credentials, another database."""
        from sqlalchemy.engine import make_url

        url = make_url(self.url).set(database=database).render_as_string(hide_password=False)
        return Server(url=url, host=self.host, port=self.port, database=database)

    def dsn(self, database: str | None = None) -> str:
        """A libpq-style URL for asyncpg (no SQLAlchemy driver suffix)."""
        from sqlalchemy.engine import make_url

        parsed = make_url(self.url).set(drivername="postgresql")
        if database is not None:
            parsed = parsed.set(database=database)
        return parsed.render_as_string(hide_password=False)


def fresh_database_name(prefix: str = "cpu_split") -> str:
    """A new database name: `PREFIX_` and 8 hex digits."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def create_database(server: Server, name: str) -> Server:
    """Create database `name` on `server`'s server; the server pointed at it."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a plain lower-case database name: {name!r}")

    async def create() -> None:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(server.dsn(ADMIN_DATABASE))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')  # name checked above
        finally:
            await conn.close()

    asyncio.run(create())
    return server.with_database(name)


def read_counters(server: Server) -> dict[str, int]:
    """`pg_stat_database`'s COUNTERS of `server.database` (read from ADMIN_DATABASE)."""

    async def read() -> dict[str, int]:
        import asyncpg

        conn = await asyncpg.connect(server.dsn(ADMIN_DATABASE))
        try:
            row = await conn.fetchrow(
                f"SELECT {', '.join(COUNTERS)} FROM pg_stat_database WHERE datname = $1",
                server.database,
            )
        finally:
            await conn.close()
        if row is None:
            raise LookupError(f"no database {server.database!r} in pg_stat_database")
        return {key: int(row[key] or 0) for key in COUNTERS}

    return asyncio.run(read())


def settle(
    read: Callable[[], T],
    *,
    quiet_s: float = STATS_IDLE_FLUSH_S + 1.0,
    interval_s: float = 1.0,
    timeout_s: float = 45.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[T, bool]:
    """Poll `read()` until its value has not changed for `quiet_s`; (last value, settled).

    Bounded by `timeout_s`: a value still moving then is returned with False.
    """
    started = clock()
    value = read()
    unchanged_since = started
    while True:
        now = clock()
        if now - unchanged_since >= quiet_s:
            return value, True
        if now - started >= timeout_s:
            return value, False
        sleep(interval_s)  # a bounded poll of a counter PostgreSQL publishes late
        latest = read()
        if latest != value:
            value, unchanged_since = latest, clock()


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """`after - before`, key by key (keys missing before count from 0)."""
    return {key: after[key] - before.get(key, 0) for key in after}


def listening_pid(connections: Iterable[Any], port: int) -> int | None:
    """The pid of the process listening on TCP `port` among psutil-style connections."""
    for conn in connections:
        laddr = getattr(conn, "laddr", None)
        if conn.status == psutil.CONN_LISTEN and laddr and laddr.port == port and conn.pid:
            return int(conn.pid)
    return None


def server_pid(port: int) -> int:
    """The postmaster's pid: the process listening on `port` (needs root for another user's)."""
    pid = listening_pid(psutil.net_connections(kind="tcp"), port)
    if pid is None:
        raise LookupError(
            f"no process seen listening on port {port} (another user's server needs root "
            "to be seen): pass the postmaster's pid instead (`head -1 DATADIR/postmaster.pid`)"
        )
    return pid


class ServerCPU:
    """User + system CPU seconds of a PostgreSQL server: the postmaster and its children."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)

    def seconds(self) -> float:
        """CPU so far: live processes, and exited backends through the postmaster's children."""
        times = self.root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in self.root.children(recursive=True):
            try:
                child_times = child.cpu_times()
            except psutil.Error:
                continue  # exited meanwhile: it counts through children_* from now on
            total += child_times.user + child_times.system
        return float(total)
