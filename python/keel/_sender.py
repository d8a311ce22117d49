"""The background sender: training never waits for keel, and nothing logged is lost.

`Run.log` hands closed rows to a bounded queue and returns. One daemon thread takes them,
reads their tensors (one transfer per row), and posts them in batches. While the server
cannot be reached, batches go to a spool file on disk, replayed in order when it answers
again; ingest is idempotent by (run, branch, step), so a batch sent twice changes nothing.
A batch the server refuses is cut down to the records it refuses, which go to a dead-letter
file with the server's reason, and a warning says where.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from ._http import Client, Refused, Unreachable

MAX_BATCH = 1000
BACKOFF_MAX = 10.0


class Call:
    """A request other than ingest (a status, a command's outcome), sent in queue order."""

    __slots__ = ("method", "path", "body")

    def __init__(self, method: str, path: str, body: Any):
        self.method = method
        self.path = path  # "{run}" stands for the run's id
        self.body = body


_CLOSE = object()


class Sender:
    def __init__(
        self,
        client: Client,
        spec: Callable[[], dict],
        folder: Path,
        key: str,
        queue_size: int = 10_000,
        interval: float = 0.5,
    ):
        self.client = client
        self.spec = spec  # the run's creation body, asked for when the first row is sent
        self.folder = folder
        self.key = key
        self.interval = interval
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.run_id: int | None = None
        self.created = threading.Event()
        self.layers: int | None = None  # fixed by the first row: what the run is created with
        self.ranks: int | None = None
        self.dropped = 0
        self.refused = 0
        self.sent = 0
        self.broken: str | None = None
        self._calls: list[Call] = []
        self._spool_path = folder / f"spool-{key}.jsonl"
        self._meta_path = folder / f"spool-{key}.json"
        self._spool_at = 0  # records of the spool already sent…
        self._spool_pos = 0  # …and the byte where the first unsent one starts
        self._spooled = 0
        self._meta_run: Any = ()  # the run id the meta file was last written with
        self._backoff = 0.0
        self._retry_at = 0.0
        self._deadline = 0.0
        self._thread = threading.Thread(target=self._loop, name="keel-sender", daemon=True)
        self._thread.start()

    # ---- the training thread's side ----

    def put(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                warnings.warn(
                    "keel: the send queue is full (the server is slow or away and the disk spool "
                    "cannot keep up); rows are being dropped and counted",
                    stacklevel=3,
                )

    def close(self, timeout: float) -> bool:
        """Sends what is queued, for at most `timeout` seconds. True when all of it went."""
        deadline = time.monotonic() + timeout
        self._deadline = deadline
        try:
            self.queue.put(_CLOSE, timeout=max(timeout, 0.1))
        except queue.Full:
            return False
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        return not self._thread.is_alive() and self.pending() == 0

    def pending(self) -> int:
        """Records on the spool not yet sent, and calls not yet made."""
        return (self._spooled - self._spool_at) + len(self._calls)

    @property
    def spool_path(self) -> Path:
        return self._spool_path

    # ---- the sender thread ----

    def _loop(self) -> None:
        while True:
            try:
                self._work()
                return
            except Exception as e:  # a full disk, say: warn, and go on sending
                warnings.warn(f"keel: the sender failed ({type(e).__name__}: {e}); it goes on")
                time.sleep(1.0)

    def _work(self) -> None:
        closing = False
        while True:
            # What arrives within one interval goes in one request: a request per step would
            # cost the training process more than the step's statistics do.
            items = []
            until = time.monotonic() + self.interval
            while len(items) < MAX_BATCH:
                try:
                    items.append(self.queue.get(timeout=max(until - time.monotonic(), 0.0)))
                except queue.Empty:
                    break
                if items[-1] is _CLOSE:
                    break
            records: list[tuple[int, dict]] = []
            for item in items:
                if item is _CLOSE:
                    closing = True
                elif isinstance(item, Call):
                    # Calls go after the records logged before them.
                    self._flush(records)
                    records = []
                    self._calls.append(item)
                else:
                    if self.layers is None:
                        spec = self.spec()
                        self.layers, self.ranks = spec["layers"], spec.get("ranks")
                    try:
                        records.append((item.branch, item.resolve(self.layers, self.ranks)))
                    except Exception as e:  # a tensor that cannot be read: that row only
                        warnings.warn(f"keel: step {item.step} could not be read ({e}); not logged")
            self._flush(records)
            if closing:
                # Keep trying until everything went or the deadline passed; then the spool
                # keeps what is left.
                self._retry_at = 0.0
                self._flush([])
                while self.pending() and time.monotonic() < self._deadline and not self.broken:
                    time.sleep(max(min(self._retry_at, self._deadline) - time.monotonic(), 0.05))
                    self._flush([])
                return

    def _flush(self, records: list[tuple[int, dict]]) -> None:
        if records:
            if self._spooled > self._spool_at or not self._try_send(records):
                self._spool(records)
        if self.pending() and time.monotonic() >= self._retry_at:
            self._drain()

    def _ensure_run(self) -> bool:
        if self.run_id is not None:
            return True
        if self.broken:
            return False
        spec = self.spec()
        try:
            answer = self.client.call("POST", "/api/v1/runs", spec)
        except Unreachable:
            return False
        except Refused as e:
            self.broken = f"the server refused to create the run: {e.message}"
            warnings.warn(f"keel: {self.broken}; steps go to {self._dead_path()}")
            return False
        self.run_id = int(answer["id"])
        self.layers, self.ranks = spec["layers"], spec.get("ranks")
        self.created.set()
        if self._spooled > self._spool_at:
            self._write_meta()
        return True

    def _try_send(self, records: list[tuple[int, dict]]) -> bool:
        """Posts records in order, grouped by branch. False: the server is away."""
        if not self._ensure_run():
            if self.broken:
                self._dead(records, self.broken)
                return True
            self._away()
            return False
        start = 0
        while start < len(records):
            branch = records[start][0]
            end = start
            while end < len(records) and records[end][0] == branch and end - start < MAX_BATCH:
                end += 1
            try:
                self._post(branch, [r for _, r in records[start:end]])
            except Unreachable:
                # What went before is stored; only the rest waits for the server.
                del records[:start]
                self._away()
                return False
            start = end
        self._backoff = 0.0
        return True

    def _post(self, branch: int, steps: list[dict]) -> None:
        try:
            self.client.call("POST", f"/api/v1/runs/{self.run_id}/steps", {"branch": branch, "steps": steps})
            self.sent += len(steps)
        except Refused as e:
            if len(steps) > 1 and e.status in (413, 422):
                # One bad record refuses the whole batch: find it, send the rest.
                half = len(steps) // 2
                self._post(branch, steps[:half])
                self._post(branch, steps[half:])
            else:
                self._dead([(branch, s) for s in steps], e.message)

    def _drain(self) -> None:
        """Replays the spool in order, then makes the waiting calls."""
        while self._spooled > self._spool_at:
            # From where the last replay stopped: a long outage's spool is not read again
            # from its start at every retry.
            with open(self._spool_path, "rb") as f:
                f.seek(self._spool_pos)
                lines = [f.readline() for _ in range(min(MAX_BATCH, self._spooled - self._spool_at))]
            records = [(c["branch"], c["record"]) for c in map(json.loads, lines)]
            total = len(records)
            sent_all = self._try_send(records)
            sent = total if sent_all else total - len(records)
            self._spool_at += sent
            self._spool_pos += sum(len(line) for line in lines[:sent])
            if not sent_all:
                return
        if self._spooled:
            self._spool_path.unlink(missing_ok=True)
            self._meta_path.unlink(missing_ok=True)
            self._spool_at = self._spooled = self._spool_pos = 0
            self._meta_run = ()
        while self._calls:
            call = self._calls[0]
            if not self._ensure_run():
                if self.broken:
                    self._calls.clear()
                else:
                    self._away()
                return
            try:
                self.client.call(call.method, call.path.replace("{run}", str(self.run_id)), call.body)
            except Unreachable:
                self._away()
                return
            except Refused as e:
                warnings.warn(f"keel: {call.method} {call.path} was refused: {e.message}")
            self._calls.pop(0)

    def _away(self) -> None:
        self._backoff = min(max(self._backoff * 2, 0.5), BACKOFF_MAX)
        self._retry_at = time.monotonic() + self._backoff

    def _spool(self, records: list[tuple[int, dict]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_meta()
        with open(self._spool_path, "a", encoding="utf-8") as f:
            for branch, record in records:
                f.write(json.dumps({"branch": branch, "record": record}, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._spooled += len(records)

    def _write_meta(self) -> None:
        """What `python -m keel sync` needs to send the spool from another process: written
        when the spool starts, and again once the run has its id."""
        if self._meta_run != self.run_id:
            meta = {"server": self.client.server, "run_id": self.run_id, "spec": self.spec()}
            self._meta_path.write_text(json.dumps(meta, allow_nan=False))
            self._meta_run = self.run_id

    def _dead_path(self) -> Path:
        return self.folder / f"refused-run-{self.run_id if self.run_id is not None else self.key}.jsonl"

    def _dead(self, records: list[tuple[int, dict]], reason: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._dead_path()
        with open(path, "a", encoding="utf-8") as f:
            for branch, record in records:
                f.write(json.dumps({"reason": reason, "branch": branch, "record": record}, allow_nan=False) + "\n")
        self.refused += len(records)
        steps = ", ".join(str(r["step"]) for _, r in records[:5])
        warnings.warn(f"keel: the server refused step(s) {steps}{'…' if len(records) > 5 else ''}: {reason}; kept in {path}")
