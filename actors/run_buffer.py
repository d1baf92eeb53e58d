"""The event log of one run: contiguous `seq` numbers and delta coalescing.

Events up to `sealed` have been handed to a reader and never change again; a
`message.delta` appended while the previous event is an unsealed delta is
merged into it, so a slow reader gets fewer, larger deltas with the same
concatenated text and no gap in `seq`.
"""

from __future__ import annotations

import orjson

from actors.events import FINAL_TYPES, MESSAGE_DELTA, Event


class RunBuffer:
    """Ordered, seq-numbered events of one run, with delta coalescing."""

    __slots__ = (
        "_events",
        "finished_at",
        "nbytes",
        "relative",
        "run_id",
        "sealed",
        "text_parts",
        "user_id",
    )

    def __init__(
        self,
        run_id: str,
        user_id: str,
        prelude: list[Event] | None = None,
        *,
        relative: bool = False,
    ) -> None:
        self.run_id = run_id
        self.user_id = user_id
        # A relative buffer carries the last word of a run whose real buffer was
        # lost with its actor: its seqs are unknown here, and each socket numbers
        # its events after the last seq it sent.
        self.relative = relative
        self._events: list[Event] = []
        self.sealed = 0
        self.text_parts: list[str] = []
        self.finished_at: float | None = None
        self.nbytes = 0  # UTF-8 bytes of the text this buffer holds (events and reply)
        for event in prelude or ():
            self.append(event)

    @property
    def last_seq(self) -> int:
        """The seq of the newest event (0 when empty)."""
        return len(self._events)

    @property
    def finished(self) -> bool:
        """True once a final event (completed, cancelled, failed) is in the log."""
        return bool(self._events) and self._events[-1]["type"] in FINAL_TYPES

    @property
    def text(self) -> str:
        """The reply so far: the concatenation of every delta."""
        return "".join(self.text_parts)

    def append(self, event: Event) -> Event:
        """Add an event (or merge a delta into the unsealed tail); return the stored event."""
        if self.finished:
            raise RuntimeError(f"run {self.run_id} already has its final event")
        if event["type"] == MESSAGE_DELTA:
            self.text_parts.append(event["text"])
            # Held twice: in the reply's parts and in a delta event.
            self.nbytes += 2 * len(event["text"].encode())
            tail = self._events[-1] if self._events else None
            if tail is not None and tail["type"] == MESSAGE_DELTA and tail["seq"] > self.sealed:
                tail["text"] += event["text"]
                return tail
        stored = {**event, "run_id": self.run_id, "seq": len(self._events) + 1}
        if event["type"] != MESSAGE_DELTA:
            self.nbytes += len(orjson.dumps(stored))
        self._events.append(stored)
        return stored

    def after(self, seq: int) -> list[Event]:
        """Events with `seq > seq`, sealing everything returned."""
        chunk = self._events[max(seq, 0) :]
        if chunk:
            self.sealed = max(self.sealed, self.last_seq)
        return chunk

    def final_event(self) -> Event | None:
        """The run's final event, if it has one."""
        return self._events[-1] if self.finished else None
