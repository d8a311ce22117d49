"""keel's Python client: stream a training run into keel and steer it from keel's pages.

    import keel
    run = keel.init(name="gpt-small", config=cfg)
    for step in range(steps):
        ...
        run.log({"loss": loss, "lr": lr}, step=step)
    run.finish()

`keel.log`, `keel.finish` and `keel.run` follow the last `init`, so `import keel as wandb`
serves the common calls. Logging never blocks training and never raises for the server's
sake: see `keel._sender`.
"""

from __future__ import annotations

import atexit
import os
import re
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from . import _wire
from ._http import Client
from ._sender import Call, Sender

__all__ = ["init", "log", "finish", "Run", "run"]
__version__ = "0.1.0"

DEFAULT_SERVER = "http://127.0.0.1:8080"
PROTOCOL = 1

run: "Run | None" = None


class Run:
    """One keel run. Made by `keel.init`."""

    def __init__(
        self,
        name: str | None = None,
        group: str | None = None,
        config: Any = None,
        server: str | None = None,
        token: str | None = None,
        layers: int | None = None,
        tags: list[str] | None = None,
        variant: str | None = None,
        dir: str | os.PathLike | None = None,
        layer_key: str | None = None,
        finish_timeout: float | None = None,
    ):
        self.server = (server or os.environ.get("KEEL_SERVER") or DEFAULT_SERVER).rstrip("/")
        self.name = name or _generated_name()
        self.group = group
        self.variant = variant
        self.tags = list(tags or [])
        self.config = _config_dict(config)
        self._layers = layers
        if layers is not None and not (1 <= int(layers) <= 4096):
            raise ValueError(f"`layers` must be between 1 and 4096, got {layers}")
        self._ranks: int | None = None
        self.finish_timeout = float(
            finish_timeout if finish_timeout is not None else os.environ.get("KEEL_FINISH_TIMEOUT", 30)
        )
        # `layer_key`: a regex with groups `layer` and `stat` for per-layer keys of another shape
        self._layer_key = re.compile(layer_key) if layer_key else None
        self.folder = Path(dir or os.environ.get("KEEL_DIR") or ".keel")
        self._client = Client(self.server, token if token is not None else os.environ.get("KEEL_TOKEN"))
        key = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{id(self) % 10000:04d}"
        self._sender = Sender(self._client, self._spec, self.folder, key)
        self._lock = threading.Lock()
        self._row: _wire.Row | None = None
        self._next_step = 0
        self._last_step: int | None = None
        self.branch = 0
        self._finished = False
        self._first_vector_len: int | None = None
        # Taps (`keel.torch.watch`) that add what they measured to each row as it closes.
        self._taps: list = []
        atexit.register(self._at_exit)

    # ---- what the server knows ----

    @property
    def layers(self) -> int | None:
        return self._layers

    def set_layers(self, n: int) -> None:
        """The number of blocks, for a run whose layer count comes from `watch`."""
        if self._sender.layers is not None and self._sender.layers != n:
            raise ValueError(f"this run was created with {self._sender.layers} layers, not {n}")
        self._layers = n

    def set_ranks(self, n: int) -> None:
        """The number of ranks, for the `rank_*` statistics of a distributed run (before the
        first step is logged: the run is created with it)."""
        if self._sender.layers is not None and self._sender.ranks != n:
            _wire.warn_once("ranks", "keel: the run was created before its ranks were known; its rank_* statistics are not logged")
        self._ranks = n

    def _spec(self) -> dict:
        layers = self._layers or self._first_vector_len or 1
        self._layers = layers
        spec: dict[str, Any] = {
            "name": self.name[:200],
            "layers": layers,
            "group": self.group,
            "variant": self.variant,
            "tags": self.tags,
            "config": self.config,
            "protocol": PROTOCOL,
        }
        if self._ranks is not None:
            spec["ranks"] = self._ranks
        return spec

    @property
    def id(self) -> int | None:
        """The run's id on the server; waits up to 10 s for the run to be created there.

        None while the server cannot be reached (the run is created when it can).
        """
        if self._sender.run_id is None:
            if self._sender.layers is None:
                # Nothing logged yet: any call makes the sender create the run now.
                self._sender.put(Call("GET", "/api/v1/runs/{run}", None))
            self._sender.created.wait(10)
        return self._sender.run_id

    def wait_created(self, timeout: float | None = None) -> int | None:
        self._sender.created.wait(timeout)
        return self._sender.run_id

    @property
    def url(self) -> str | None:
        run_id = self.id
        return None if run_id is None else f"{self.server}/runs/{run_id}"

    @property
    def step(self) -> int:
        """The step the next `log` without `step` goes to."""
        return self._next_step

    # ---- logging ----

    def log(self, data: dict, step: int | None = None, commit: bool | None = None) -> None:
        """Logs values at a step.

        Without `step`, each call is the next step (as in wandb). With `step`, calls at the
        same step merge into one record, sent when a later step is logged, when `commit=True`,
        at `Control.step`, or at `finish`. A step below the last one sent is dropped with a
        warning, unless a rewind started a new branch. Scalars are numbers or one-element
        tensors; a list or 1-D tensor is a layer statistic (one value per block); keys
        `layers/<i>/<stat>` are folded into `<stat>`'s vector; `tokens` and `time` fill the
        record's fields.
        """
        if not isinstance(data, dict):
            raise TypeError(f"run.log takes a dict, got {type(data).__name__}")
        if self._finished:
            _wire.warn_once("finished", "keel: log after finish() is ignored")
            return
        with self._lock:
            if step is None:
                if self._row is not None and commit is None:
                    self._close_row()
                step = self._next_step
                if commit is None:
                    commit = True
            step = int(step)
            if step < 0 or step > _wire.MAX_STEP:
                _wire.warn_once("range", f"keel: step {step} is out of range (0 to {_wire.MAX_STEP}); not logged")
                return
            if self._row is not None and step != self._row.step:
                if step < self._row.step:
                    _wire.warn_once("back", f"keel: step {step} is below the current step {self._row.step}; not logged")
                    return
                self._close_row()
            if self._row is None:
                if self._last_step is not None and step <= self._last_step:
                    _wire.warn_once("back", f"keel: step {step} was already logged (the last was {self._last_step}); not logged")
                    return
                self._row = _wire.Row(step, self.branch, time.time())
            self._row.add(data, self._layer_key)
            if commit:
                self._close_row()

    def commit(self) -> None:
        """Sends the open step now."""
        with self._lock:
            if self._row is not None:
                self._close_row()

    def _close_row(self) -> None:
        row = self._row
        self._row = None
        if row is None:
            return
        self._collect(row)
        if self._first_vector_len is None and self._layers is None:
            lengths = row.vector_lengths()
            if lengths:
                self._first_vector_len = max(lengths)
        try:
            row.pack()
        except Exception as e:  # never raise into the training loop
            _wire.warn_once("pack", f"keel: could not gather a step's tensors ({e}); they are read one by one")
        self._last_step = row.step
        self._next_step = row.step + 1
        self._sender.put(row)

    def _collect(self, row: _wire.Row) -> None:
        for tap in self._taps:
            try:
                tap.collect(row)
            except Exception as e:  # never raise into the training loop
                _wire.warn_once("tap", f"keel: a tap failed ({e}); its statistics are left out")

    def collect_taps(self) -> None:
        """Adds what the taps measured to the open step now, rather than when it closes
        (for loops that log a step's values after its boundary, as HF's Trainer does)."""
        with self._lock:
            if self._row is not None:
                self._collect(self._row)

    def _rewound(self, step: int) -> None:
        """After a rewind to the checkpoint at `step`: what follows goes to a new branch."""
        with self._lock:
            if self._row is not None:
                self._close_row()
            self.branch += 1
            self._last_step = step
            self._next_step = step + 1

    def _call(self, method: str, path: str, body: Any) -> Call:
        call = Call(method, path, body)
        self._sender.put(call)
        return call

    # ---- the end ----

    def finish(self, status: str = "finished", exit_code: int | None = None, message: str | None = None) -> None:
        """Sends what is left and the final status (`finished` or `failed`)."""
        if self._finished:
            return
        if exit_code is not None:
            status = "finished" if exit_code == 0 else "failed"
        if status not in ("finished", "failed"):
            raise ValueError(f"a run finishes as `finished` or `failed`, not {status!r}")
        self.commit()
        self._finished = True
        body = {"status": status}
        if message:
            body["message"] = message[:1000]
        self._call("POST", "/api/v1/runs/{run}/status", body)
        ok = self._sender.close(self.finish_timeout)
        if not ok:
            warnings.warn(
                f"keel: the server at {self.server} did not take everything within {self.finish_timeout:g} s; "
                f"{self._sender.pending()} record(s) are kept in {self._sender.spool_path} "
                f"(send them with `python -m keel sync {self.folder}`)"
            )
        if self._sender.dropped:
            warnings.warn(f"keel: {self._sender.dropped} row(s) were dropped because the send queue was full")
        global run
        if run is self:
            run = None

    def _at_exit(self) -> None:
        if not self._finished:
            failed = _exit_hooks.failed
            self.finish("failed" if failed else "finished", message="the process exited with an error" if failed else None)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.finish("failed" if kind is not None else "finished")


class _ExitHooks:
    """Notices an uncaught exception, so that the exit hook reports the run `failed`."""

    def __init__(self) -> None:
        self.failed = False
        self._previous = sys.excepthook
        sys.excepthook = self._hook

    def _hook(self, kind, value, tb) -> None:
        self.failed = True
        self._previous(kind, value, tb)


_exit_hooks = _ExitHooks()


def init(
    name: str | None = None,
    group: str | None = None,
    config: Any = None,
    server: str | None = None,
    token: str | None = None,
    layers: int | None = None,
    **kwargs: Any,
) -> Run:
    """Starts a run. `server` and `token` default to `KEEL_SERVER` and `KEEL_TOKEN`.

    Also takes `tags`, `variant`, `dir` (the spool folder, default `.keel`), `layer_key`
    and `finish_timeout`. wandb's `project`, `entity`, `notes`, `job_type`, `mode`, `id`,
    `resume`, `reinit` and `settings` are accepted and ignored (`project` becomes the group
    when no group is given).
    """
    global run
    own = {k: kwargs.pop(k) for k in ("tags", "variant", "dir", "layer_key", "finish_timeout") if k in kwargs}
    project = kwargs.pop("project", None)
    ignored = set(kwargs) - {"entity", "notes", "job_type", "mode", "id", "resume", "reinit", "settings", "save_code", "anonymous"}
    if ignored:
        raise TypeError(f"keel.init got unknown argument(s): {', '.join(sorted(ignored))}")
    if run is not None and not run._finished:
        run.finish()
    run = Run(name=name, group=group or project, config=config, server=server, token=token, layers=layers, **own)
    return run


def log(data: dict, step: int | None = None, commit: bool | None = None) -> None:
    if run is None:
        raise RuntimeError("keel.log before keel.init")
    run.log(data, step=step, commit=commit)


def finish(status: str = "finished", exit_code: int | None = None) -> None:
    if run is not None:
        run.finish(status, exit_code=exit_code)


def _config_dict(config: Any) -> Any:
    if config is None:
        return None
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif hasattr(config, "__dict__") and not isinstance(config, dict):
        config = vars(config)
    return _jsonable(config)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return _wire.metric(x)
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return str(x)


def _generated_name() -> str:
    return f"{socket.gethostname().split('.')[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
