"""benchmarks.cpu_split, benchmarks.postgres and the HAProxy routing check of benchmarks.systems.

Pure parts only: no Ray, no PostgreSQL server, no sleeps (clocks are fakes).
"""

from __future__ import annotations

import collections
import os
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from benchmarks import cpu_split, postgres, systems

# HAProxy's `/stats;csv` of a `raychat` system (Ray 2.60's config), cut after `hrsp_2xx`:
# the replica has answered one WebSocket upgrade (101) and one /readyz (200).
HEADER = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,"
    "wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,"
    "sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,"
    "check_duration,hrsp_1xx,hrsp_2xx"
)
REPLICA = (
    "http-raychat,SERVE_REPLICA_raychat-RaychatIngress-qc9mpy4r,0,0,0,1,,2,615,483,,0,,0,0,"
    "0,0,{status},1,1,0,0,0,4,0,,1,5,1,,2,,2,0,,2,L7OK,200,1,{upgrades},1"
)
FALLBACK = (
    "http-raychat,SERVE_PROXY_ACTOR-fallback-c55f8f7c,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1,0,1,0,"
    "0,32,0,,1,5,2,,0,,2,0,,0,L7OK,200,0,{upgrades},0"
)
BACKEND = (
    "http-raychat,BACKEND,0,0,0,1,410,2,615,483,0,0,,0,0,0,0,UP,1,1,1,,0,4,0,,1,5,0,,2,,1,0,"
    ",2,,,,7,1"
)
STATS = "stats,FRONTEND,,,1,1,4096,3,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,1,0,1,,,,9,2"


def csv(*rows: str) -> str:
    return "\n".join([HEADER, *rows]) + "\n"


def test_replica_upgrades_counts_the_replica_not_the_fallback() -> None:
    text = csv(STATS, REPLICA.format(status="UP", upgrades=1), FALLBACK.format(upgrades=5), BACKEND)
    assert systems.replica_upgrades(text) == 1


def test_replica_upgrades_is_none_without_a_replica_up() -> None:
    assert systems.replica_upgrades(csv(STATS, FALLBACK.format(upgrades=3), BACKEND)) is None
    down = REPLICA.format(status="DOWN", upgrades=4)
    assert systems.replica_upgrades(csv(down, FALLBACK.format(upgrades=3))) is None
    going_down = REPLICA.format(status="UP 1/2", upgrades=4)  # still takes traffic
    assert systems.replica_upgrades(csv(going_down)) == 4


def test_replica_upgrades_refuses_what_is_not_haproxy_csv() -> None:
    with pytest.raises(ValueError):
        systems.replica_upgrades("<html>stats</html>")
    with pytest.raises(ValueError):
        systems.replica_upgrades("")


class _Probe:
    """Stands in for HAProxy's statistics and the ping socket of `_routed_to_replica`."""

    def __init__(self, readings: list[int | None]) -> None:
        self.readings = readings
        self.pings = 0

    def upgrades(self, system: Any) -> int | None:
        return self.readings.pop(0)

    def pong(self, system: Any) -> bool:
        self.pings += 1
        return True


@pytest.mark.parametrize(
    ("readings", "expected", "pings"),
    [
        ([None], None, 0),  # no replica UP in HAProxy yet: no socket is opened
        ([3, 4], True, 1),  # the ping's upgrade was answered by the replica
        ([3, 3], None, 1),  # it went to the fallback (Python proxy) or an old HAProxy
        ([3, None], None, 1),  # a reload answered without the replica
    ],
)
def test_routed_to_replica(
    monkeypatch: pytest.MonkeyPatch, readings: list[int | None], expected: Any, pings: int
) -> None:
    probe = _Probe(list(readings))
    monkeypatch.setattr(systems, "_haproxy_upgrades", probe.upgrades)
    monkeypatch.setattr(systems, "_pong", probe.pong)
    assert systems._routed_to_replica(object()) is expected  # type: ignore[arg-type]
    assert probe.pings == pings
    assert probe.readings == []


class _Launched(Exception):
    pass


def test_start_system_passes_the_database_and_extra_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[dict[str, str]] = []

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        seen.append(kwargs["env"])
        raise _Launched

    monkeypatch.setattr(systems.subprocess, "Popen", popen)
    url = "postgresql+asyncpg://postgres@127.0.0.1:5432/cpu_split_0123abcd"
    extra = {"RAYCHAT_PERSISTENCE_WRITERS": "2"}
    with pytest.raises(_Launched):
        systems.start_system("serial", systems.SimSettings(), tmp_path, database_url=url, env=extra)
    with pytest.raises(_Launched):
        systems.start_system("serial", systems.SimSettings(), tmp_path)
    assert seen[0]["RAYCHAT_DATABASE_URL"] == url
    assert seen[0]["RAYCHAT_PERSISTENCE_WRITERS"] == "2"
    assert seen[1]["RAYCHAT_DATABASE_URL"] == f"sqlite+aiosqlite:///{tmp_path / 'serial.db'}"
    assert seen[1].get("RAYCHAT_PERSISTENCE_WRITERS") == os.environ.get(
        "RAYCHAT_PERSISTENCE_WRITERS"
    )


def test_hide_password() -> None:
    assert systems._hide_password("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"
    assert systems._hide_password("postgresql://u@h/db") == "postgresql://u@h/db"
    assert systems._hide_password("sqlite+aiosqlite:///x.db") == "sqlite+aiosqlite:///x.db"


# -- benchmarks.postgres ----------------------------------------------------------------


def test_is_postgres() -> None:
    assert postgres.is_postgres("postgresql+asyncpg://u@h/db")
    assert postgres.is_postgres("postgresql://u@h/db")
    assert not postgres.is_postgres("sqlite+aiosqlite:///x.db")


def test_server_from_url_and_another_database() -> None:
    server = postgres.Server.from_url("postgresql+asyncpg://me:pw@127.0.0.1:55225/postgres")
    assert (server.host, server.port, server.database) == ("127.0.0.1", 55225, "postgres")
    run = server.with_database("cpu_split_0123abcd")
    assert run.url == "postgresql+asyncpg://me:pw@127.0.0.1:55225/cpu_split_0123abcd"
    assert run.port == 55225
    assert run.dsn() == "postgresql://me:pw@127.0.0.1:55225/cpu_split_0123abcd"
    assert run.dsn("postgres") == "postgresql://me:pw@127.0.0.1:55225/postgres"
    bare = postgres.Server.from_url("postgresql+asyncpg://me@db")
    assert (bare.host, bare.port, bare.database) == ("db", 5432, "postgres")
    with pytest.raises(ValueError):
        postgres.Server.from_url("sqlite+aiosqlite:///x.db")


def test_fresh_database_names_are_plain_and_new() -> None:
    first, second = postgres.fresh_database_name(), postgres.fresh_database_name()
    assert first != second
    assert postgres._NAME.fullmatch(first)


def test_create_database_refuses_odd_names_before_connecting() -> None:
    server = postgres.Server.from_url("postgresql+asyncpg://u@127.0.0.1:1/postgres")
    with pytest.raises(ValueError):
        postgres.create_database(server, 'x"; DROP DATABASE postgres; --')


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_settle_waits_until_the_counters_stop_moving() -> None:
    clock = _Clock()
    values = iter([10, 12, 15, 15, 15] + [15] * 100)
    value, settled = postgres.settle(
        lambda: next(values), quiet_s=5, interval_s=1, timeout_s=60, clock=clock, sleep=clock.sleep
    )
    assert (value, settled) == (15, True)
    assert clock.now == 7  # last change read at t=2, then 5 quiet seconds


def test_settle_gives_up_when_they_keep_moving() -> None:
    clock = _Clock()
    counter = iter(range(1000))
    value, settled = postgres.settle(
        lambda: next(counter), quiet_s=5, interval_s=1, timeout_s=10, clock=clock, sleep=clock.sleep
    )
    assert not settled
    assert value == 10
    assert clock.now == 10


def test_delta() -> None:
    assert postgres.delta({"xact_commit": 5}, {"xact_commit": 9, "tup_inserted": 3}) == {
        "xact_commit": 4,
        "tup_inserted": 3,
    }


Addr = collections.namedtuple("Addr", "ip port")
Conn = collections.namedtuple("Conn", "fd family type laddr raddr status pid")


def test_listening_pid_is_the_listener_of_that_port() -> None:
    conns = [
        Conn(3, 2, 1, Addr("127.0.0.1", 40000), Addr("127.0.0.1", 55225), "ESTABLISHED", 11),
        Conn(4, 2, 1, Addr("127.0.0.1", 55225), Addr("127.0.0.1", 40000), "ESTABLISHED", 12),
        Conn(5, 2, 1, Addr("127.0.0.1", 5432), (), psutil.CONN_LISTEN, 13),
        Conn(6, 2, 1, Addr("127.0.0.1", 55225), (), psutil.CONN_LISTEN, 14),
    ]
    assert postgres.listening_pid(conns, 55225) == 14
    assert postgres.listening_pid(conns, 1234) is None
    no_pid = [Conn(6, 2, 1, Addr("127.0.0.1", 55225), (), psutil.CONN_LISTEN, None)]
    assert postgres.listening_pid(no_pid, 55225) is None


def test_server_cpu_counts_the_process_and_its_children() -> None:
    cpu = postgres.ServerCPU(os.getpid())
    first = cpu.seconds()
    assert first > 0
    assert cpu.seconds() >= first


# -- benchmarks.cpu_split ---------------------------------------------------------------


def parse(*argv: str) -> Any:
    return cpu_split.build_parser().parse_args(list(argv))


PG = "postgresql+asyncpg://postgres@127.0.0.1:55225/postgres"


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["raychat"], None),
        (["raychat", "--writers", "1"], None),
        (["raychat", "--writers", "2"], "needs PostgreSQL"),
        (["raychat", "--writers", "2", "--database-url", PG], None),
        (["raychat", "--database-url", PG, "--fresh-database", "--postgres-pid", "7"], None),
        (["raychat", "--fresh-database"], "need --database-url"),
        (["raychat", "--database-url", "sqlite+aiosqlite:///x.db", "--fresh-database"], "need"),
        (["minimal", "--writers", "1"], "Ray systems only"),
    ],
)
def test_check_args(argv: list[str], problem: str | None) -> None:
    found = cpu_split.check_args(parse(*argv))
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_writers_set_the_servers_variable() -> None:
    assert cpu_split.server_env(None) == {}
    assert cpu_split.server_env(2) == {"RAYCHAT_PERSISTENCE_WRITERS": "2"}


class _System:
    name = "fake"
    base_url = "http://127.0.0.1:1"

    def server_pids(self) -> list[int]:
        return [os.getpid(), 2**22 + 12345]  # this process and one that does not exist


def test_cpu_by_kind_adds_the_extra_kinds() -> None:
    seconds = cpu_split.cpu_by_kind(_System(), {"postgres": lambda: 1.5})  # type: ignore[arg-type]
    assert seconds["postgres"] == 1.5
    assert seconds["other"] > 0  # pytest's own process is of no known kind
    assert set(seconds) == {"postgres", "other"}


def test_cpu_used_and_the_table() -> None:
    before = {"AgentActor": 10.0, "postgres": 1.0, "gone": 0.5}
    after = {"AgentActor": 16.0, "postgres": 1.6, "haproxy": 0.3}
    used = cpu_split.cpu_used(before, after)
    assert used == pytest.approx({"AgentActor": 6.0, "postgres": 0.6, "haproxy": 0.3})
    lines = cpu_split.per_turn_lines(used, 600)
    assert [line.split()[0] for line in lines] == ["AgentActor", "postgres", "haproxy", "total"]
    assert lines[0].split()[-2] == "10.0"  # 6 s over 600 turns
    assert lines[-1].split()[-2] == "11.5"


def test_stats_per_turn() -> None:
    before = {"agent_manager": {"polls": 10, "events_sent": 100}, "persistence": {"batches": 4}}
    after = {
        "agent_manager": {"polls": 70, "events_sent": 1300, "agents": ["a"]},
        "persistence": {"batches": 64, "written": 240, "writers": [{}], "lag_ms": {}},
    }
    assert cpu_split.stats_per_turn(before, after, 120) == {
        "agent_manager.polls": 0.5,
        "agent_manager.events_sent": 10.0,
        "persistence.batches": 0.5,
        "persistence.written": 2.0,
    }
    assert cpu_split.stats_per_turn({}, {}, 10) == {}


def test_actor_counts_come_from_the_ingress_section() -> None:
    stats = {
        "shards": [{"shard": 0}],  # the per-shard list, not the count
        "ingress": {"proxy": "haproxy", "shards": 1, "agent_actors": 2, "persistence_writers": 2},
    }
    assert cpu_split.actor_counts(stats) == (
        "proxy haproxy, shards 1, agent_actors 2, persistence_writers 2"
    )
    assert cpu_split.actor_counts({}) == ""
