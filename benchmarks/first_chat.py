"""Start-up as a user sees it: `serve run serve_app:app` in a fresh folder, then chats at once.

`python -m benchmarks.first_chat --runs 3` starts `serve run serve_app:app`
(from `--app-dir`, default this checkout) in a new temporary folder with
nothing set, times the launch until Serve prints that the application is ready,
sends a chat at once from a fresh user (its time to first token), then
`--warm` more chats one after another (their median), stops the service with
SIGINT to its process group (as Ctrl-C does) and prints one JSON line per run.
Port 8000 must be free. Give `--app-dir` another checkout (and the same path in
PYTHONPATH) to measure an older version the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets

READY_MARKERS = ("is ready at", "Deployed app")
STOP_TIMEOUT_S = 120.0


async def chat_ttft(url: str, text: str) -> tuple[float, str]:
    """Seconds from sending `text` to its first delta, and the run's final event type."""
    async with websockets.connect(url) as ws:
        sent = time.monotonic()
        await ws.send(json.dumps({"type": "chat", "text": text}))
        ttft = float("nan")
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == "message.delta" and ttft != ttft:
                ttft = time.monotonic() - sent
            if event["type"] in ("run.completed", "run.failed", "run.cancelled", "error"):
                return ttft, str(event["type"])


def one_start(app_dir: Path, warm: int, timeout_s: float) -> dict[str, Any]:
    """Start the service once, measure, stop it; the figures of that start."""
    folder = Path(tempfile.mkdtemp(prefix="raychat-first-chat-"))
    log_path = folder / "serve.log"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    launched = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["serve", "run", "--app-dir", str(app_dir), "serve_app:app"],
            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        while not any(m in log_path.read_text(errors="replace") for m in READY_MARKERS):
            if process.poll() is not None or time.monotonic() - launched > timeout_s:
                raise RuntimeError(f"no ready service; see {log_path}")
            time.sleep(0.1)  # polling the log of a subprocess, bounded above
        ready_s = time.monotonic() - launched
        token = subprocess.check_output(
            ["raychat", "token", "first-chat-user"], cwd=folder, env=env, text=True
        ).strip()
        url = f"ws://127.0.0.1:8000/api/websocket/ws?token={token}"
        first, final = asyncio.run(chat_ttft(url, "hello, first chat"))
        warm_ttfts = [asyncio.run(chat_ttft(url, f"hello again {i}"))[0] for i in range(warm)]
    finally:
        os.killpg(process.pid, signal.SIGINT)
        stopping = time.monotonic()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        stop_s = time.monotonic() - stopping
    warm_ms = 1000 * statistics.median(warm_ttfts) if warm_ttfts else float("nan")
    return {
        "ready_s": round(ready_s, 1),
        "first_chat_ttft_ms": round(1000 * first),
        "first_chat_final": final,
        "warm_chat_ttft_ms": round(warm_ms),
        "first_x_warm": round(1000 * first / warm_ms, 2),
        "ready_plus_first_ttft_s": round(ready_s + first, 1),
        "stop_s": round(stop_s, 1),
    }


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--app-dir", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--warm", type=int, default=5)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args()
    for _ in range(args.runs):
        result = one_start(args.app_dir, args.warm, args.timeout_s)
        print(json.dumps({"app_dir": str(args.app_dir), **result}), flush=True)


if __name__ == "__main__":
    main()
