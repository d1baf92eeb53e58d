"""The terminal client's keyboard: lines typed at the prompt, read without blocking."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024


class StdinLines:
    """Lines typed at the prompt, read without blocking the event loop.

    Reads only while `start`ed (the prompt is shown), so type-ahead waits in the
    terminal, and stops once a whole line is there. `on_ready` is called when
    a line or the end of input (Ctrl-D) arrives.
    """

    def __init__(self, fd: int, on_ready: Callable[[], None]) -> None:
        self._fd = fd
        self._on_ready = on_ready
        self._buffer = bytearray()
        self._lines: deque[str] = deque()
        self._reading = False
        self._polled = False  # a regular file: no reader callbacks, read on the next tick
        self.eof = False

    @property
    def ready(self) -> bool:
        """True when a line (or the end of input) is waiting."""
        return bool(self._lines) or self.eof

    def start(self) -> None:
        """Begin reading (the prompt is shown)."""
        if self._reading or self.ready:
            return
        loop = asyncio.get_running_loop()
        self._reading = True
        try:
            loop.add_reader(self._fd, self._readable)
        except PermissionError:  # stdin is a regular file: reading it never blocks
            self._polled = True
            loop.call_soon(self._readable)

    def stop(self) -> None:
        """Stop reading."""
        if self._reading and not self._polled:
            asyncio.get_running_loop().remove_reader(self._fd)
        self._reading = False

    def pop(self) -> str | None:
        """The next line (without its newline), or None at the end of input."""
        return self._lines.popleft() if self._lines else None

    def _readable(self) -> None:
        if not self._reading:
            return
        try:
            data = os.read(self._fd, 4096)
        except OSError as exc:  # the terminal went away (EIO): the end of input
            logger.debug("reading stdin failed: %s", exc)
            data = b""
        if not data:
            self.eof = True
            if self._buffer:  # a last line without a newline
                self._lines.append(self._buffer.decode(errors="replace"))
                self._buffer.clear()
        self._buffer += data
        while b"\n" in self._buffer or len(self._buffer) >= MAX_LINE_BYTES:
            line, _, rest = bytes(self._buffer).partition(b"\n")
            self._lines.append(line.decode(errors="replace"))
            self._buffer = bytearray(rest)
        if self.ready:
            self.stop()
            self._on_ready()
        elif self._polled:
            asyncio.get_running_loop().call_soon(self._readable)
