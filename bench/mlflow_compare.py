#!/usr/bin/env python3
"""keel vs MLflow on the same workload, same machine, in one run.

Usage (from anywhere):

    python3 bench/mlflow_compare.py                 # 2000 steps x 24 layers, batches of 100 steps
    python3 bench/mlflow_compare.py --steps 200     # a quick smoke run

What it does, in order:

1. Makes (or reuses) a virtualenv at bench/.venv, installs `mlflow` into it from PyPI unless
   it is already importable there, and re-executes itself inside that venv.
2. Builds keel (`cargo build --release` in the repo root) unless `--keel-bin` names a binary.
3. Starts `keel serve` and `mlflow server` on free loopback ports, each on a fresh SQLite file
   in a temporary directory, and waits for `/healthz` and `/health`.
4. Runs the same deterministic workload against each, one system at a time (the other idle):
   ingest (10 scalars + 7 layer statistics x L layers per step), a full-resolution read-back
   of every value (verified bit for bit), and a dashboard-style downsampled read.
5. Prints a Markdown table and writes bench/out/mlflow_compare.json.

Both clients are the Python standard library's `http.client` on one persistent connection
speaking each server's REST API directly, so neither side pays for a heavier client library.
Request bodies are encoded before the clock starts; a timed request covers sending it, the
server's work, reading the whole answer and, for reads, `json.loads` of it (a client has to
decode what it reads). Verification happens after the clock stops.

Both servers are stopped at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = BENCH / ".venv"
OUT = BENCH / "out"

SCALARS = [
    "loss",
    "loss/code",
    "loss/math",
    "loss/prose",
    "lr",
    "grad_norm",
    "grad_clipped",
    "z_loss",
    "tokens_per_s",
    "step_time_s",
]
STATS = [
    "hidden_var",
    "hidden_rms",
    "act_absmax",
    "attn_logit_max",
    "grad_norm",
    "param_norm",
    "update_ratio",
]
KEEL_TOKEN = "bench-token"
MLFLOW_MAX_METRICS_PER_BATCH = 1000  # mlflow/utils/validation.py: MAX_METRICS_PER_BATCH
MLFLOW_MAX_HISTORY_PAGE = 25000  # mlflow/store/tracking: MAX_RESULTS_GET_METRIC_HISTORY
DOWNSAMPLED_POINTS = 500
BASE_TIME = 1_700_000_000.0  # fixed epoch so the workload is fully deterministic
STEP_SECONDS = 0.25  # 250 ms apart: every step gets its own MLflow millisecond timestamp


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# 1. The virtualenv.
# --------------------------------------------------------------------------------------------


def venv_python() -> Path:
    return VENV / "bin" / "python"


def inside_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def ensure_venv_and_reexec() -> None:
    """Create bench/.venv if needed, then exec this script with its interpreter."""
    if inside_venv():
        return
    if not venv_python().exists():
        log(f"creating virtualenv {VENV.relative_to(ROOT)} (python3 -m venv)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    else:
        log(f"reusing virtualenv {VENV.relative_to(ROOT)}")
    py = str(venv_python())
    os.execv(py, [py, str(Path(__file__).resolve()), *sys.argv[1:]])


def ensure_mlflow() -> str:
    """pip install mlflow into the venv unless it already imports; returns its version."""
    probe = [sys.executable, "-c", "import mlflow, sys; sys.stdout.write(mlflow.__version__)"]
    r = subprocess.run(probe, capture_output=True, text=True)
    if r.returncode == 0:
        log(f"mlflow {r.stdout.strip()} is already importable in bench/.venv; skipping pip install")
        return r.stdout.strip()
    log("mlflow is not importable in bench/.venv; running pip install mlflow (PyPI)")
    subprocess.run([sys.executable, "-m", "pip", "install", "mlflow"], check=True)
    r = subprocess.run(probe, capture_output=True, text=True, check=True)
    log(f"installed mlflow {r.stdout.strip()}")
    return r.stdout.strip()


def pip_version() -> str:
    r = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    return r.stdout.split(" from ")[0].strip() if r.returncode == 0 else "unknown"


# --------------------------------------------------------------------------------------------
# 2. keel.
# --------------------------------------------------------------------------------------------


def ensure_keel(override: str | None) -> Path:
    if override:
        path = Path(override).resolve()
        if not path.is_file():
            sys.exit(f"--keel-bin {override}: no such file")
        log(f"using keel binary {path}")
        return path
    log("cargo build --release (a no-op when keel is up to date; may wait for another cargo)")
    t0 = time.perf_counter()
    subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    log(f"cargo finished in {time.perf_counter() - t0:.1f} s")
    path = ROOT / "target" / "release" / "keel"
    if not path.is_file():
        sys.exit(f"cargo built, but {path} is missing")
    return path


# --------------------------------------------------------------------------------------------
# 3. Servers.
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process in its own process group, with stdout/stderr in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict, cwd: Path, logfile: Path,
                 port: int, health: str):
        self.name, self.port, self.health, self.logfile = name, port, health, logfile
        self._log = open(logfile, "wb")
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> float:
        t0 = time.perf_counter()
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready; "
                    f"its log ({self.logfile}) ends:\n{self.tail()}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", self.health)
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    return time.perf_counter() - t0
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready after {timeout:.0f} s; log ends:\n"
                           f"{self.tail()}")

    def rss_mib(self) -> float:
        """Resident memory of every process in the server's process group."""
        pgid = self.proc.pid
        total_kib = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getpgid(int(entry)) != pgid:
                    continue
                for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total_kib += int(line.split()[1])
            except (OSError, ProcessLookupError, ValueError):
                continue
        return total_kib / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)
        else:
            # The leader is gone; make sure no worker it forked outlives it.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()


def mlflow_server_flags(mlflow_bin: Path) -> tuple[list[str], str]:
    """Extra flags for this mlflow version, decided from `mlflow server --help`."""
    help_text = subprocess.run([str(mlflow_bin), "server", "--help"], capture_output=True,
                               text=True, check=True).stdout
    extra: list[str] = []
    notes = []
    if "--allowed-hosts" in help_text:
        # mlflow >= 3.5 validates the Host header; its default list already admits localhost and
        # 127.0.0.1 on any port, so the security middleware stays on (as a user would run it).
        notes.append("security middleware on (default hosts admit 127.0.0.1)")
    if "--uvicorn-opts" in help_text:
        notes.append("uvicorn (default server)")
    return extra, "; ".join(notes)


# --------------------------------------------------------------------------------------------
# HTTP.
# --------------------------------------------------------------------------------------------


class HttpError(RuntimeError):
    pass


class Http:
    """One persistent HTTP/1.1 connection, counting requests and bytes."""

    def __init__(self, port: int, headers: dict[str, str] | None = None):
        self.port = port
        self.headers = headers or {}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.requests = 0
        self.bytes_out = 0
        self.bytes_in = 0

    def call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        headers = dict(self.headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        self.requests += 1
        self.bytes_out += len(body or b"")
        self.bytes_in += len(data)
        if resp.status >= 300:
            raise HttpError(f"{method} {path} -> {resp.status}: {data[:500]!r}")
        return data

    def get_json(self, path: str):
        return json.loads(self.call("GET", path))

    def post_json(self, path: str, payload) -> object:
        return json.loads(self.call("POST", path, json.dumps(payload).encode()))

    def close(self) -> None:
        self.conn.close()

    def counters(self) -> dict:
        return {"requests": self.requests, "bytes_sent": self.bytes_out,
                "bytes_received": self.bytes_in}


# --------------------------------------------------------------------------------------------
# 4. Workload.
# --------------------------------------------------------------------------------------------


class Workload:
    """Deterministic pseudo-random training telemetry: steps 1..N."""

    def __init__(self, steps: int, layers: int, seed: int):
        self.steps, self.layers = steps, layers
        rng = random.Random(seed)
        self.step_ids = list(range(1, steps + 1))
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.scalars: dict[str, list[float]] = {k: [] for k in SCALARS}
        self.stats: dict[str, list[list[float]]] = {k: [] for k in STATS}
        depth = [(l + 1) / layers for l in range(layers)]
        for s in self.step_ids:
            frac = s / steps
            self.times.append(BASE_TIME + s * STEP_SECONDS)
            self.tokens.append(s * 524_288)
            loss = 2.1 + 8.3 * math.exp(-6.0 * frac) + rng.gauss(0.0, 0.03)
            grad_norm = 0.6 + 2.0 * math.exp(-4.0 * frac) + abs(rng.gauss(0.0, 0.2))
            warm = min(1.0, s / max(1, steps // 20))
            sc = self.scalars
            sc["loss"].append(loss)
            sc["loss/code"].append(loss * 0.85 + rng.gauss(0.0, 0.05))
            sc["loss/math"].append(loss * 1.10 + rng.gauss(0.0, 0.05))
            sc["loss/prose"].append(loss * 1.02 + rng.gauss(0.0, 0.05))
            sc["lr"].append(3e-4 * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))))
            sc["grad_norm"].append(grad_norm)
            sc["grad_clipped"].append(1.0 if grad_norm > 1.0 else 0.0)
            sc["z_loss"].append(1e-4 * loss * loss + abs(rng.gauss(0.0, 1e-5)))
            sc["tokens_per_s"].append(410_000.0 + rng.gauss(0.0, 6_000.0))
            sc["step_time_s"].append(524_288 / sc["tokens_per_s"][-1])
            st = self.stats
            st["hidden_var"].append([(0.5 + 2.5 * d) * (1 + rng.gauss(0, 0.05)) for d in depth])
            st["hidden_rms"].append([math.sqrt(v) for v in st["hidden_var"][-1]])
            st["act_absmax"].append([(8 + 40 * d * d) * math.exp(rng.gauss(0, 0.1)) for d in depth])
            st["attn_logit_max"].append([(5 + 10 * d) * (1 + 0.5 * frac) + rng.gauss(0, 0.3)
                                         for d in depth])
            st["grad_norm"].append([grad_norm / layers * math.exp(rng.gauss(0, 0.2))
                                    for _ in depth])
            st["param_norm"].append([(20 + 5 * d) * (1 + 0.3 * frac) + rng.gauss(0, 0.01)
                                     for d in depth])
            st["update_ratio"].append([1e-3 * warm * math.exp(rng.gauss(0, 0.15))
                                       for _ in depth])

    @property
    def values_per_step(self) -> int:
        return len(SCALARS) + len(STATS) * self.layers

    @property
    def total_values(self) -> int:
        return self.values_per_step * self.steps

    def mlflow_series(self) -> dict[str, list[float]]:
        """MLflow's view: each layer value is its own metric key `{stat}/{layer}`."""
        out = {k: v for k, v in self.scalars.items()}
        for stat, rows in self.stats.items():
            for l in range(self.layers):
                out[f"{stat}/{l}"] = [row[l] for row in rows]
        return out

    def batches(self, batch: int):
        for start in range(0, self.steps, batch):
            yield range(start, min(start + batch, self.steps))

    def keel_bodies(self, batch: int) -> list[bytes]:
        bodies = []
        for idx in self.batches(batch):
            steps = [{
                "step": self.step_ids[i],
                "time": self.times[i],
                "tokens": self.tokens[i],
                "scalars": {k: self.scalars[k][i] for k in SCALARS},
                "layers": {k: self.stats[k][i] for k in STATS},
            } for i in idx]
            bodies.append(json.dumps({"steps": steps}).encode())
        return bodies

    def mlflow_bodies(self, batch: int, run_id: str) -> list[bytes]:
        """One trainer flush per `batch` steps, split into log-batch requests of <= 1000."""
        series = self.mlflow_series()
        bodies = []
        for idx in self.batches(batch):
            metrics = []
            for i in idx:
                ts = int(round(self.times[i] * 1000))
                step = self.step_ids[i]
                for key, values in series.items():
                    metrics.append({"key": key, "value": values[i], "timestamp": ts,
                                    "step": step})
            for j in range(0, len(metrics), MLFLOW_MAX_METRICS_PER_BATCH):
                chunk = metrics[j:j + MLFLOW_MAX_METRICS_PER_BATCH]
                bodies.append(json.dumps({"run_id": run_id, "metrics": chunk}).encode())
        return bodies


# --------------------------------------------------------------------------------------------
# Verification helpers.
# --------------------------------------------------------------------------------------------


class Check:
    """Tallies of what came back versus what was sent."""

    def __init__(self):
        self.expected = 0
        self.returned = 0
        self.exact = 0
        self.mismatched = 0
        self.missing = 0
        self.extra = 0
        self.out_of_order = 0
        self.max_rel_err = 0.0
        self.problems: list[str] = []

    def note(self, msg: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(msg)

    def value(self, where: str, got, want: float) -> None:
        self.returned += 1
        if isinstance(got, str):  # keel sends NaN/Infinity as strings; none are sent here
            got = float(got)
        if got == want:
            self.exact += 1
            return
        self.mismatched += 1
        rel = abs(got - want) / max(abs(want), 1e-300)
        self.max_rel_err = max(self.max_rel_err, rel)
        self.note(f"{where}: got {got!r}, sent {want!r} (rel err {rel:.3g})")

    @property
    def ok(self) -> bool:
        return (self.missing == 0 and self.mismatched == 0 and self.extra == 0
                and self.returned == self.expected)

    def summary(self) -> dict:
        return {
            "ok": self.ok, "expected": self.expected, "returned": self.returned,
            "bit_exact": self.exact, "mismatched": self.mismatched, "missing": self.missing,
            "extra": self.extra, "out_of_order": self.out_of_order,
            "max_rel_err": self.max_rel_err, "problems": self.problems,
        }


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# --------------------------------------------------------------------------------------------
# keel.
# --------------------------------------------------------------------------------------------


def keel_ingest(port: int, wl: Workload, batch: int) -> dict:
    h = Http(port, {"Authorization": f"Bearer {KEEL_TOKEN}"})
    bodies = wl.keel_bodies(batch)
    h.call("GET", "/healthz")  # open the connection outside the clock
    h.requests = h.bytes_in = h.bytes_out = 0
    accepted = 0

    def run():
        nonlocal accepted
        run_id = h.post_json("/api/v1/runs", {"name": "bench", "layers": wl.layers,
                                              "config": {}})["id"]
        for body in bodies:
            accepted += json.loads(h.call("POST", f"/api/v1/runs/{run_id}/steps", body))[
                "accepted"]
        return run_id

    secs, run_id = timed(run)
    h.close()
    if accepted != wl.steps:
        raise RuntimeError(f"keel accepted {accepted} of {wl.steps} steps")
    return {"run_id": run_id, "seconds": secs, **h.counters()}


def keel_path(run_id, kind: str, name: str, query: str) -> str:
    return f"/api/v1/runs/{run_id}/{kind}/{urllib.parse.quote(name, safe='/')}?{query}"


def keel_read(port: int, run_id, points: int, first_step: int | None = None
              ) -> tuple[float, dict, dict, dict]:
    """`first_step`: pass `from=` too. keel's window starts at step 0 unless told otherwise,
    so a run logged at steps 1..N spans N+1 steps and `points=N` alone would pair steps up."""
    h = Http(port)
    h.call("GET", "/healthz")
    h.requests = h.bytes_in = h.bytes_out = 0
    scalars, layers = {}, {}
    frm = "" if first_step is None else f"from={first_step}&"

    def run():
        for k in SCALARS:
            scalars[k] = h.get_json(keel_path(run_id, "scalars", k, f"{frm}points={points}"))
        for k in STATS:
            layers[k] = h.get_json(keel_path(run_id, "layers", k, f"{frm}columns={points}"))

    secs, _ = timed(run)
    h.close()
    return secs, scalars, layers, h.counters()


def verify_keel_full(wl: Workload, scalars: dict, layers: dict) -> Check:
    c = Check()
    c.expected = wl.total_values
    for k in SCALARS:
        r = scalars[k]
        if r["step"] != wl.step_ids:
            c.note(f"scalar {k}: {len(r['step'])} buckets, steps differ from those sent")
        got_by_step = dict(zip(r["step"], r["last"]))
        c.extra += len(set(r["step"]) - set(wl.step_ids))
        for i, s in enumerate(wl.step_ids):
            if s not in got_by_step:
                c.missing += 1
                continue
            c.value(f"{k}@{s}", got_by_step[s], wl.scalars[k][i])
        c.out_of_order += sum(1 for a, b in zip(r["step"], r["step"][1:]) if b <= a)
    for k in STATS:
        r = layers[k]
        if r["step"] != wl.step_ids:
            c.note(f"layers {k}: {len(r['step'])} buckets, steps differ from those sent")
        got_by_step = dict(zip(r["step"], r["mean"]))
        c.extra += len(set(r["step"]) - set(wl.step_ids)) * wl.layers
        for i, s in enumerate(wl.step_ids):
            row = got_by_step.get(s)
            if row is None or len(row) != wl.layers:
                c.missing += wl.layers
                continue
            for l in range(wl.layers):
                c.value(f"{k}/{l}@{s}", row[l], wl.stats[k][i][l])
        c.out_of_order += sum(1 for a, b in zip(r["step"], r["step"][1:]) if b <= a)
    return c


def verify_keel_downsampled(wl: Workload, scalars: dict, layers: dict, points: int) -> dict:
    """Each bucket [step[i], step[i+1]) must carry the exact min/max/last (scalars) or
    min/max (layers) of the values sent in it, and a mean within rounding of theirs."""
    pos = {s: i for i, s in enumerate(wl.step_ids)}
    out = {"ok": True, "buckets_per_scalar": {}, "buckets_per_stat": {}, "problems": []}

    def ranges(steps):
        idx = [pos[s] for s in steps]
        return list(zip(idx, idx[1:] + [wl.steps]))

    def bad(msg):
        out["ok"] = False
        if len(out["problems"]) < 20:
            out["problems"].append(msg)

    for k in SCALARS:
        r = scalars[k]
        out["buckets_per_scalar"][k] = len(r["step"])
        if not 0 < len(r["step"]) <= points:
            bad(f"scalar {k}: {len(r['step'])} buckets for points={points}")
        for b, (lo, hi) in enumerate(ranges(r["step"])):
            vals = wl.scalars[k][lo:hi]
            mean = math.fsum(vals) / len(vals)
            if (r["min"][b] != min(vals) or r["max"][b] != max(vals) or r["last"][b] != vals[-1]
                    or not math.isclose(r["mean"][b], mean, rel_tol=1e-9, abs_tol=1e-300)):
                bad(f"scalar {k} bucket {b} (steps {lo + 1}..{hi}) disagrees with the data sent")
                break
    for k in STATS:
        r = layers[k]
        out["buckets_per_stat"][k] = len(r["step"])
        if not 0 < len(r["step"]) <= points:
            bad(f"layers {k}: {len(r['step'])} buckets for columns={points}")
        for b, (lo, hi) in enumerate(ranges(r["step"])):
            rows = wl.stats[k][lo:hi]
            for l in range(wl.layers):
                col = [row[l] for row in rows]
                mean = math.fsum(col) / len(col)
                if (r["min"][b][l] != min(col) or r["max"][b][l] != max(col)
                        or not math.isclose(r["mean"][b][l], mean, rel_tol=1e-9)):
                    bad(f"layers {k} bucket {b} layer {l} disagrees with the data sent")
                    break
    return out


# --------------------------------------------------------------------------------------------
# MLflow.
# --------------------------------------------------------------------------------------------


def mlflow_ingest(port: int, wl: Workload, batch: int) -> dict:
    h = Http(port)
    h.call("GET", "/health")  # open the connection outside the clock
    h.requests = h.bytes_in = h.bytes_out = 0
    # The run has to exist before the bodies (which carry its id) can be encoded, so the
    # experiment and run are made first and timed separately, then added to the total.
    setup_secs, run_id = timed(lambda: _mlflow_create_run(h))
    bodies = wl.mlflow_bodies(batch, run_id)
    biggest = max(len(b) for b in bodies)

    def run():
        for body in bodies:
            h.call("POST", "/api/2.0/mlflow/runs/log-batch", body)

    secs, _ = timed(run)
    counters = h.counters()
    h.call("POST", "/api/2.0/mlflow/runs/update",
           json.dumps({"run_id": run_id, "status": "FINISHED"}).encode())
    h.close()
    return {"run_id": run_id, "seconds": setup_secs + secs, "log_batch_requests": len(bodies),
            "largest_request_bytes": biggest, **counters}


def _mlflow_create_run(h: Http) -> str:
    exp = h.post_json("/api/2.0/mlflow/experiments/create", {"name": "bench"})["experiment_id"]
    run = h.post_json("/api/2.0/mlflow/runs/create",
                      {"experiment_id": exp, "run_name": "bench",
                       "start_time": int(BASE_TIME * 1000)})
    return run["run"]["info"]["run_id"]


def mlflow_history(h: Http, run_id: str, key: str, page: int) -> list[dict]:
    q = {"run_id": run_id, "metric_key": key, "max_results": page}
    metrics: list[dict] = []
    while True:
        r = h.get_json("/api/2.0/mlflow/metrics/get-history?" + urllib.parse.urlencode(q))
        metrics.extend(r.get("metrics", []))
        token = r.get("next_page_token")
        if not token:
            return metrics
        q["page_token"] = token


def mlflow_read_full(port: int, run_id: str, keys: list[str], steps: int):
    h = Http(port)
    h.call("GET", "/health")
    h.requests = h.bytes_in = h.bytes_out = 0
    page = min(steps, MLFLOW_MAX_HISTORY_PAGE)
    got: dict[str, list[dict]] = {}

    def run():
        for k in keys:
            got[k] = mlflow_history(h, run_id, k, page)

    secs, _ = timed(run)
    h.close()
    return secs, got, h.counters()


def mlflow_read_sampled(port: int, run_id: str, keys: list[str], points: int):
    """The endpoint MLflow's own UI charts use: evenly spaced *rows* (no min/max/mean)."""
    h = Http(port)
    h.call("GET", "/health")
    h.requests = h.bytes_in = h.bytes_out = 0
    got: dict[str, list[dict]] = {}

    def run():
        for k in keys:
            q = urllib.parse.urlencode({"run_ids": run_id, "metric_key": k,
                                        "max_results": points})
            got[k] = h.get_json(
                "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval?" + q
            ).get("metrics", [])

    secs, _ = timed(run)
    h.close()
    return secs, got, h.counters()


def verify_mlflow_full(wl: Workload, got: dict[str, list[dict]]) -> Check:
    c = Check()
    c.expected = wl.total_values
    pos = {s: i for i, s in enumerate(wl.step_ids)}
    want_ts = [int(round(t * 1000)) for t in wl.times]
    for key, values in wl.mlflow_series().items():
        rows = got.get(key, [])
        steps = [int(m.get("step", 0)) for m in rows]
        c.out_of_order += sum(1 for a, b in zip(steps, steps[1:]) if b <= a)
        seen = set()
        for m, s in zip(rows, steps):
            i = pos.get(s)
            if i is None or s in seen:
                c.extra += 1
                c.note(f"{key}: unexpected or repeated step {s}")
                continue
            seen.add(s)
            if int(m.get("timestamp", -1)) != want_ts[i]:
                c.note(f"{key}@{s}: timestamp {m.get('timestamp')} != {want_ts[i]}")
            c.value(f"{key}@{s}", m["value"], values[i])
        c.missing += len(wl.step_ids) - len(seen)
    return c


def verify_mlflow_sampled(wl: Workload, got: dict[str, list[dict]], points: int) -> dict:
    pos = {s: i for i, s in enumerate(wl.step_ids)}
    out = {"ok": True, "min_points": None, "max_points": 0, "problems": []}
    for key, values in wl.mlflow_series().items():
        rows = got.get(key, [])
        n = len(rows)
        out["max_points"] = max(out["max_points"], n)
        out["min_points"] = n if out["min_points"] is None else min(out["min_points"], n)
        steps = [int(m.get("step", 0)) for m in rows]
        problem = None
        if not 0 < n <= points:
            problem = f"{n} points for max_results={points}"
        elif steps[0] != wl.step_ids[0] or steps[-1] != wl.step_ids[-1]:
            problem = "first/last step missing"
        elif any(pos.get(s) is None or m["value"] != values[pos[s]] for m, s in zip(rows, steps)):
            problem = "a sampled value differs from the one logged at its step"
        if problem:
            out["ok"] = False
            if len(out["problems"]) < 20:
                out["problems"].append(f"{key}: {problem}")
    return out


# --------------------------------------------------------------------------------------------
# 5. Report.
# --------------------------------------------------------------------------------------------


def db_size_mib(*paths: Path) -> float:
    total = 0
    for p in paths:
        for suffix in ("", "-wal", "-shm", "-journal"):
            q = Path(str(p) + suffix)
            if q.exists():
                total += q.stat().st_size
    return total / (1024 * 1024)


def fmt(x, digits=3) -> str:
    if x is None:
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{digits}f}".rstrip("0").rstrip(".")


def table(res: dict) -> str:
    k, m = res["keel"], res["mlflow"]
    rows = [
        # (label, keel value, mlflow value, ratio kind) — "time": MLflow/keel; "rate": keel/MLflow
        ("ingest (s)", k["ingest_s"], m["ingest_s"], "time"),
        ("ingest (values/s)", k["ingest_values_per_s"], m["ingest_values_per_s"], "rate"),
        ("ingest requests", k["ingest_requests"], m["ingest_requests"], None),
        ("ingest MiB sent", k["ingest_mib_sent"], m["ingest_mib_sent"], None),
        ("full read, every value (s)", k["full_read_s"], m["full_read_s"], "time"),
        ("full read requests", k["full_read_requests"], m["full_read_requests"], None),
        ("full read MiB received", k["full_read_mib"], m["full_read_mib"], None),
        (f"downsampled read, {DOWNSAMPLED_POINTS} pts (s) — MLflow re-reads full history",
         k["down_read_s"], m["down_read_s"], "time"),
        (f"downsampled read, {DOWNSAMPLED_POINTS} pts (s) — MLflow UI's sampled endpoint",
         k["down_read_s"], m["sampled_read_s"], "time"),
        ("database on disk (MiB)", k["db_mib"], m["db_mib"], "time"),
        ("server RSS after the run (MiB)", k["rss_mib"], m["rss_mib"], "time"),
    ]
    lines = ["| measure | keel | MLflow | keel advantage |", "|---|---:|---:|---:|"]
    for label, kv, mv, kind in rows:
        ratio = "–"
        if kind and kv and mv:
            ratio = f"{(mv / kv if kind == 'time' else kv / mv):.1f}×"
        lines.append(f"| {label} | {fmt(kv)} | {fmt(mv)} | {ratio} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------


class Stop(Exception):
    pass


def on_sigterm(signum, frame):
    raise Stop(f"signal {signum}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--batch", type=int, default=100, help="steps per ingest request "
                    "(MLflow: per flush, split into log-batch calls of <= 1000 metrics)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--keel-bin", help="use this keel binary instead of cargo build --release")
    ap.add_argument("--ready-timeout", type=float, default=180.0,
                    help="seconds to wait for each server's health check")
    ap.add_argument("--mlflow-jobs", action="store_true",
                    help="leave MLflow's background job runner on (its default)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary databases and logs")
    args = ap.parse_args()
    if args.steps < 1 or args.layers < 1 or args.batch < 1:
        ap.error("--steps, --layers and --batch must be positive")
    if args.steps > 100_000:
        ap.error("--steps: keel answers at most 100000 points per query (MAX_BUCKETS)")

    ensure_venv_and_reexec()
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    mlflow_version = ensure_mlflow()
    keel_bin = ensure_keel(args.keel_bin)
    keel_version = subprocess.run([str(keel_bin), "--version"], capture_output=True,
                                  text=True).stdout.strip()

    log(f"workload: {args.steps} steps x ({len(SCALARS)} scalars + {len(STATS)} stats x "
        f"{args.layers} layers) = {len(SCALARS) + len(STATS) * args.layers} values/step, "
        f"seed {args.seed}")
    wl = Workload(args.steps, args.layers, args.seed)
    mlflow_keys = list(wl.mlflow_series().keys())

    tmp = Path(tempfile.mkdtemp(prefix="keel-vs-mlflow-"))
    servers: list[Server] = []
    load_before = os.getloadavg()
    try:
        keel_port, mlflow_port = free_port(), free_port()
        while mlflow_port == keel_port:
            mlflow_port = free_port()
        keel_env = dict(os.environ, KEEL_TOKEN=KEEL_TOKEN, RUST_LOG="warn")
        keel = Server("keel", [str(keel_bin), "serve", "--addr", f"127.0.0.1:{keel_port}",
                               "--db", str(tmp / "keel.db")],
                      keel_env, tmp, tmp / "keel.log", keel_port, "/healthz")
        servers.append(keel)

        mlflow_bin = Path(sys.executable).parent / "mlflow"
        extra, mlflow_notes = mlflow_server_flags(mlflow_bin)
        (tmp / "artifacts").mkdir()
        # No telemetry: nothing may leave this machine.
        mlflow_env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
        if not args.mlflow_jobs:
            # mlflow >= 3.x starts a job runner and seven huey consumer processes (GenAI jobs,
            # ~1 GiB RSS together) that have nothing to do with metrics; left running they
            # would compete for the 2 cores, so they are off unless --mlflow-jobs.
            mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
            mlflow_notes += "; job execution off"
        mlflow = Server("mlflow", [
            str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
            "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
            "--artifacts-destination", str(tmp / "artifacts"),
            "--workers", "1", *extra,
        ], mlflow_env, tmp, tmp / "mlflow.log", mlflow_port, "/health")
        servers.append(mlflow)

        log(f"keel ready in {keel.wait_ready(args.ready_timeout):.1f} s on port {keel_port}")
        log(f"mlflow ready in {mlflow.wait_ready(args.ready_timeout):.1f} s on port "
            f"{mlflow_port} ({mlflow_notes})")

        total = wl.total_values
        # Ingest, one system at a time.
        log("keel: ingest")
        ki = keel_ingest(keel_port, wl, args.batch)
        log(f"keel: ingest {ki['seconds']:.2f} s ({ki['requests']} requests)")
        log("mlflow: ingest")
        mi = mlflow_ingest(mlflow_port, wl, args.batch)
        log(f"mlflow: ingest {mi['seconds']:.2f} s ({mi['requests']} requests)")

        # Full-resolution reads of every value.
        log("keel: full read")
        kf_s, ks, kl, kf_c = keel_read(keel_port, ki["run_id"], args.steps, wl.step_ids[0])
        log(f"keel: full read {kf_s:.2f} s")
        log("mlflow: full read")
        mf_s, mf, mf_c = mlflow_read_full(mlflow_port, mi["run_id"], mlflow_keys, args.steps)
        log(f"mlflow: full read {mf_s:.2f} s")
        keel_check = verify_keel_full(wl, ks, kl)
        mlflow_check = verify_mlflow_full(wl, mf)
        del mf

        # Dashboard-style reads.
        log("keel: downsampled read")
        kd_s, kds, kdl, kd_c = keel_read(keel_port, ki["run_id"], DOWNSAMPLED_POINTS)
        log(f"keel: downsampled read {kd_s:.3f} s")
        log("mlflow: dashboard read (no aggregation: full history again)")
        md_s, md, md_c = mlflow_read_full(mlflow_port, mi["run_id"], mlflow_keys, args.steps)
        log(f"mlflow: full re-read {md_s:.2f} s")
        mlflow_recheck = verify_mlflow_full(wl, md)
        del md
        log("mlflow: sampled read via get-history-bulk-interval")
        msd_s, msd, msd_c = mlflow_read_sampled(mlflow_port, mi["run_id"], mlflow_keys,
                                                DOWNSAMPLED_POINTS)
        log(f"mlflow: sampled read {msd_s:.3f} s")
        keel_down_check = verify_keel_downsampled(wl, kds, kdl, DOWNSAMPLED_POINTS)
        mlflow_sampled_check = verify_mlflow_sampled(wl, msd, DOWNSAMPLED_POINTS)

        mib = 1024 * 1024
        result = {
            "params": {"steps": args.steps, "layers": args.layers, "batch": args.batch,
                       "seed": args.seed, "values_per_step": wl.values_per_step,
                       "total_values": total, "downsampled_points": DOWNSAMPLED_POINTS},
            "versions": {"keel": keel_version, "mlflow": mlflow_version,
                         "pip": pip_version(), "python": sys.version.split()[0]},
            "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                        "loadavg_after": os.getloadavg()},
            "keel": {
                "ingest_s": ki["seconds"], "ingest_values_per_s": total / ki["seconds"],
                "ingest_requests": ki["requests"], "ingest_mib_sent": ki["bytes_sent"] / mib,
                "full_read_s": kf_s, "full_read_requests": kf_c["requests"],
                "full_read_mib": kf_c["bytes_received"] / mib,
                "down_read_s": kd_s, "down_read_requests": kd_c["requests"],
                "down_read_mib": kd_c["bytes_received"] / mib,
                "db_mib": db_size_mib(tmp / "keel.db"), "rss_mib": keel.rss_mib(),
            },
            "mlflow": {
                "ingest_s": mi["seconds"], "ingest_values_per_s": total / mi["seconds"],
                "ingest_requests": mi["requests"], "ingest_mib_sent": mi["bytes_sent"] / mib,
                "largest_log_batch_bytes": mi["largest_request_bytes"],
                "full_read_s": mf_s, "full_read_requests": mf_c["requests"],
                "full_read_mib": mf_c["bytes_received"] / mib,
                "down_read_s": md_s, "down_read_requests": md_c["requests"],
                "down_read_mib": md_c["bytes_received"] / mib,
                "sampled_read_s": msd_s, "sampled_read_requests": msd_c["requests"],
                "sampled_read_mib": msd_c["bytes_received"] / mib,
                "db_mib": db_size_mib(tmp / "mlflow.db"), "rss_mib": mlflow.rss_mib(),
                "server_notes": mlflow_notes,
            },
            "verification": {
                "keel_full": keel_check.summary(),
                "keel_downsampled": keel_down_check,
                "mlflow_full": mlflow_check.summary(),
                "mlflow_full_reread": mlflow_recheck.summary(),
                "mlflow_sampled": mlflow_sampled_check,
            },
        }
        k, m = result["keel"], result["mlflow"]
        result["ratios"] = {
            "ingest_speedup": m["ingest_s"] / k["ingest_s"],
            "full_read_speedup": m["full_read_s"] / k["full_read_s"],
            "downsampled_read_speedup_vs_full_reread": m["down_read_s"] / k["down_read_s"],
            "downsampled_read_speedup_vs_mlflow_sampled": m["sampled_read_s"] / k["down_read_s"],
        }
        OUT.mkdir(exist_ok=True)
        out_file = OUT / "mlflow_compare.json"
        out_file.write_text(json.dumps(result, indent=2) + "\n")

        print()
        print(f"## keel vs MLflow — {args.steps} steps × {wl.values_per_step} values "
              f"({total:,} values), batches of {args.batch} steps")
        print()
        print(f"{keel_version} · MLflow {mlflow_version} (SQLite, --workers 1) · "
              f"{result['versions']['pip']} · Python {result['versions']['python']} · "
              f"{os.cpu_count()} CPUs, 1-min load avg {load_before[0]:.2f} before, "
              f"{result['machine']['loadavg_after'][0]:.2f} after")
        print()
        print(table(result))
        print()
        v = result["verification"]
        for name, c in (("keel full read", v["keel_full"]), ("MLflow full read", v["mlflow_full"]),
                        ("MLflow full re-read", v["mlflow_full_reread"])):
            print(f"- {name}: {c['returned']:,}/{c['expected']:,} values, "
                  f"{c['bit_exact']:,} bit-exact, {c['mismatched']} differ, {c['missing']} "
                  f"missing, {c['extra']} extra, {c['out_of_order']} out of order"
                  + (f" — e.g. {c['problems'][0]}" if c["problems"] else ""))
        print(f"- keel downsampled: {max(v['keel_downsampled']['buckets_per_scalar'].values())} "
              f"buckets/series, min/max/last exact per bucket: "
              f"{'yes' if v['keel_downsampled']['ok'] else 'NO ' + str(v['keel_downsampled']['problems'][:3])}")
        ms = v["mlflow_sampled"]
        print(f"- MLflow sampled endpoint: {ms['min_points']}–{ms['max_points']} points/key, "
              f"values are logged rows (decimation, no min/max): "
              f"{'consistent' if ms['ok'] else 'NO ' + str(ms['problems'][:3])}")
        print(f"- MLflow: {len(mlflow_keys)} metric keys, {m['full_read_requests']} get-history "
              f"requests per full read; keel: {k['full_read_requests']} requests")
        print()
        print(f"JSON: {out_file}")
        failed = not (keel_check.ok and mlflow_check.ok and keel_down_check["ok"])
        if failed:
            print("WARNING: a verification failed; see the JSON for details", file=sys.stderr)
        return 1 if failed else 0
    except (KeyboardInterrupt, Stop) as e:
        log(f"interrupted ({str(e) or 'Ctrl-C'}); stopping the servers")
        return 130
    finally:
        for s in reversed(servers):
            s.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
