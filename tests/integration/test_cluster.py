"""A two-node Ray cluster on PostgreSQL loses its worker node while users chat.

The scenario runs in a process of its own (`cluster_scenario.py`: this test
session's Ray cluster has one node) and reports what every client saw and what
the database holds; this test judges it. The runs that may fail are exactly
those whose agent actor lived on the lost node (their state was only there);
every other run completes, also when its shard, its persistence writer or its
client's ingress replica was on that node.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.databases import new_database

ROOT = Path(__file__).resolve().parents[2]
FINALS = {"run.completed": "completed", "run.failed": "failed"}


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("cluster")
    database = new_database("postgresql", folder)
    out = folder / "facts.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.integration.cluster_scenario", database.url, str(out)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        result: dict[str, Any] = json.loads(out.read_text())
    finally:
        database.drop()
    runs = result["runs"]
    counts = collections.Counter(
        "failed with the node"
        if run["final"] == "run.failed" and run["agent"] == "worker"
        else run["final"] or "lost"
        for run in runs
    )
    counts["resumed"] = sum(run["dropped"] for run in runs)
    chats = [(chat["type"], chat["seconds"]) for chat in result["new_chats"]]
    print(
        f"\ncluster test: {dict(counts)}; node declared dead after "
        f"{result['node_dead_after_s']} s; new chats then: {chats}"
    )
    return result


def test_the_service_runs_on_both_nodes(facts: dict[str, Any]) -> None:
    placement = facts["placement"]
    for kind in ("raychat-shard", "raychat-agent", "raychat-persistence"):
        nodes = {node for name, node in placement.items() if name.startswith(kind)}
        assert nodes == {"head", "worker"}, f"{kind}: {placement}"
    assert sorted(facts["replicas"]) == ["head", "worker"]


def test_nothing_acknowledged_is_lost_and_every_run_ends(facts: dict[str, Any]) -> None:
    for run in facts["runs"]:
        assert run["error"] == "", run["error"]
        assert run["final"] in FINALS, run
        assert run["stored"]["roles"] == ["user", "assistant"]  # accepted: both rows stored
        assert run["seqs"] == list(range(1, len(run["seqs"]) + 1))  # across the resume too


def test_exactly_the_runs_on_the_lost_agent_fail(facts: dict[str, Any]) -> None:
    runs = facts["runs"]
    assert {run["user"] for run in runs if run["final"] == "run.failed"} == {
        run["user"] for run in runs if run["agent"] == "worker"
    }
    assert {run["code"] for run in runs if run["final"] == "run.failed"} == {"internal"}
    survivors = [run for run in runs if run["agent"] == "head"]
    assert survivors and all(run["final"] == "run.completed" for run in survivors)
    # Runs whose shard, writer or socket's replica was lost still complete.
    assert any(run["shard"] == "worker" for run in survivors)
    assert any(run["writer"] == "worker" for run in survivors)
    assert any(run["dropped"] for run in survivors)


def test_the_database_agrees_with_what_sockets_were_told(facts: dict[str, Any]) -> None:
    for run in facts["runs"]:
        stored = run["stored"]
        assert stored["status"] == FINALS[run["final"]]
        if run["final"] == "run.completed":
            assert run["deltas"] == run["final_text"] == stored["text"] != ""
        else:
            assert stored["error_code"] == "internal"


def test_clients_on_the_lost_replica_resume_and_new_chats_work(facts: dict[str, Any]) -> None:
    assert any(run["dropped"] for run in facts["runs"])  # some sockets were on the worker
    for chat in facts["new_chats"]:
        assert chat["type"] == "run.completed", chat
        assert chat["stored"]["status"] == "completed"
