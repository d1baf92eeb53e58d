"""CPU cost of one Ray actor call on this machine, and of the Agents SDK per run.

`python -m benchmarks.call_cost ray --calls 10000` starts a local Ray (2 CPUs,
no dashboard), has one async actor call another `--calls` times (50 at once)
with a small dict, and prints the CPU the caller and the callee spent per call;
`--handle` adds an actor handle to every call's arguments.

`python -m benchmarks.call_cost sdk --runs 1000 --concurrency 100` runs the
assistant agent with the simulated model (TTFT 200 ms, 50 tokens/s, 40
tokens) in this process, `--concurrency` runs at once on one shared agent,
and prints the CPU per run; `--per-run-copies` gives each run its own shallow
copy of the agent, as raychat's agent actors do (`per_run_copy`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from typing import Any


def _process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ray_call_cost(calls: int, with_handle: bool) -> None:
    """Print the caller's and the callee's CPU per actor call."""
    import psutil
    import ray

    @ray.remote(num_cpus=0, max_concurrency=1000)
    class Callee:
        async def work(self, payload: dict[str, Any]) -> int:
            return len(payload)

        def pid(self) -> int:
            return os.getpid()

    @ray.remote(num_cpus=0, max_concurrency=1000)
    class Caller:
        def __init__(self, callee: Any) -> None:
            self.callee = callee

        async def run(self, n: int, at_once: int) -> None:
            gate = asyncio.Semaphore(at_once)
            payload: dict[str, Any] = {"run_id": "r" * 32, "text": "hello world", "n": 1}
            if with_handle:
                payload["owner"] = ray.get_runtime_context().current_actor

            async def one() -> None:
                async with gate:
                    await self.callee.work.remote(payload)

            await asyncio.gather(*(one() for _ in range(n)))

        def pid(self) -> int:
            return os.getpid()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        callee = Callee.remote()  # type: ignore[attr-defined]
        caller = Caller.remote(callee)  # type: ignore[attr-defined]
        processes = [psutil.Process(ray.get(actor.pid.remote())) for actor in (caller, callee)]
        ray.get(caller.run.remote(min(calls, 2000), 50))  # warm up

        def cpu() -> list[float]:
            return [sum(p.cpu_times()[:2]) for p in processes]

        before, started = cpu(), time.monotonic()
        ray.get(caller.run.remote(calls, 50))
        after, wall = cpu(), time.monotonic() - started
    finally:
        ray.shutdown()
    caller_ms, callee_ms = (1000 * (a - b) / calls for a, b in zip(after, before, strict=True))
    print(
        f"{calls} calls in {wall:.1f} s{' (with a handle argument)' if with_handle else ''}: "
        f"caller {caller_ms:.3f} ms/call, callee {callee_ms:.3f} ms/call, "
        f"both {caller_ms + callee_ms:.3f} ms/call"
    )


def sdk_run_cost(runs: int, concurrency: int, copies: bool = False) -> None:
    """Print the CPU per Agents SDK run with `concurrency` runs at once on one agent."""
    os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
    from agents import RunConfig, Runner

    from actors.assistant_agents import ChatContext, build_agents, per_run_copy
    from actors.runs import ASSISTANT
    from actors.sim_model import SimulatedModel

    class NoServices:
        async def load_context(self, user_id: str) -> tuple[dict[str, str], list[Any]]:
            return {}, []

    async def main() -> None:
        model = SimulatedModel(ttft_s=0.2, tokens_per_s=50, reply_tokens=40)
        agent = build_agents(model)[ASSISTANT]
        config = RunConfig(tracing_disabled=True)
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int) -> None:
            async with gate:
                context = ChatContext(f"user-{index}", NoServices())  # type: ignore[arg-type]
                items: list[Any] = [{"role": "user", "content": f"hello {index}"}]
                run_agent = per_run_copy(agent) if copies else agent
                stream = Runner.run_streamed(run_agent, items, context=context, run_config=config)
                async for _event in stream.stream_events():
                    pass

        before, started = _process_cpu_s(), time.monotonic()
        await asyncio.gather(*(one(i) for i in range(runs)))
        cpu_ms = 1000 * (_process_cpu_s() - before) / runs
        wall = time.monotonic() - started
        shared = "a copy of the agent each" if copies else "one shared agent"
        print(
            f"{runs} runs, {concurrency} at once ({shared}), in {wall:.1f} s: "
            f"{cpu_ms:.2f} ms CPU/run"
        )

    asyncio.run(main())


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=("ray", "sdk"))
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--handle", action="store_true")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--per-run-copies", action="store_true")
    args = parser.parse_args()
    if args.what == "ray":
        ray_call_cost(args.calls, args.handle)
    else:
        sdk_run_cost(args.runs, args.concurrency, args.per_run_copies)


if __name__ == "__main__":
    main()
