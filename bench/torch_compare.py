#!/usr/bin/env python3
"""keel's candle trainer vs PyTorch on CPU: training tokens/s of the same model, in one run.

Usage (from anywhere):

    python3 bench/torch_compare.py                       # configs/proxy-small.toml, 2 threads
    python3 bench/torch_compare.py --rounds 3 --keel-rounds 4 --threads 2
    python3 bench/torch_compare.py --keel-bin target/release/examples/bench   # skip cargo

What it measures: full training steps (forward, loss, backward, gradient clipping, AdamW
update) of one config, in float32 on the CPU, with the same batch x sequence and the same
number of compute threads on both sides.

- keel: `target/release/examples/bench CONFIG K` (trainer/examples/bench.rs), with the
  settings `keel train` picks by itself (trainer/src/device.rs: one candle thread,
  RAYON_NUM_THREADS = --threads, mimalloc keeping freed pages). Its "no per-layer statistics"
  line is the median step time of 5*K steps (after 3 warm-up steps); that is the number
  compared. Its "all statistics every step" line is recorded too. A second keel variant runs
  with candle's own threads (CANDLE_NUM_THREADS = --threads) and the allocator's defaults;
  --no-keel-shared skips it.
- PyTorch: this script again (`--torch-worker`) in a subprocess, building the same model from
  the same TOML file (the defaults of trainer/src/config/mod.rs fill what the file leaves out)
  with `torch.set_num_threads(--threads)`: tied embedding x multiplier, pre-norm RMSNorm, RoPE
  (pairs i, i+d/2), causal softmax attention, SwiGLU MLP, WeSaR alpha scalars, depth-muP
  residual scale, cross-entropy + z-loss, global-norm clipping, AdamW with keel's groups
  (decay on matrices only, muP LR multiplier on matrices) and the linear warm-up. It takes
  3 warm-up steps, then times 5*K steps one by one; the median is compared. Batches are
  random bytes (keel draws its built-in text mix; that generation is part of keel's step).
  It runs twice per round: with the default OpenMP settings and with OMP_WAIT_POLICY=PASSIVE
  (worker threads sleep instead of spinning between parallel regions).

The variants run interleaved, --rounds times (keel, keel candle 1 thread, torch, torch
passive, keel, ...), so load from other processes hits each alike; the table shows the
median over rounds of each variant's per-round median. The 1-, 5- and 15-minute load
averages are recorded before and after, and around every measurement, in
bench/out/torch_compare.json.

Setup: bench/.venv is created (python3 -m venv) if missing and the script re-executes itself
inside it; `pip install torch` (PyPI) runs only when torch does not import there. PyPI's
Linux torch wheel depends on the CUDA wheels (several GB) even for CPU use; pip caches them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = BENCH / ".venv"
OUT = BENCH / "out"

# trainer/src/config/mod.rs: the values a config file does not name.
DEFAULTS = {
    "run": {"seed": 0, "batch_size": 8},
    "model": {
        "vocab_size": 256,
        "d_model": 128,
        "n_layers": 4,
        "n_heads": 4,
        "n_kv_heads": None,
        "d_ffn": 320,
        "seq_len": 128,
        "rope_theta": 10_000.0,
        "norm_eps": 1e-6,
    },
    "stability": {
        "init": "mup",
        "mup_base_width": 256,
        "depth_mup": True,
        "emb_multiplier": 10.0,
        "wesar": True,
        "wesar_std": 5e-5,
        "qk_norm": False,
        "z_loss": 1e-4,
    },
    "optim": {
        "lr": 0.01,
        "beta1": 0.9,
        "beta2": 0.95,
        "eps": 1e-15,
        "weight_decay": 0.1,
        "decay_embedding": False,
        "grad_clip": 1.0,
        "mup_lr": True,
    },
    "schedule": {"warmup_steps": 100},
}

WARMUP_STEPS = 3  # as in trainer/examples/bench.rs
STEPS_PER_ROUND = 5  # bench.rs times rounds of 5 steps per trainer


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------------------------
# 1. The virtualenv and torch.
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


def ensure_torch() -> str:
    """pip install torch into the venv unless it already imports; returns its version."""
    probe = [sys.executable, "-c", "import torch, sys; sys.stdout.write(torch.__version__)"]
    r = subprocess.run(probe, capture_output=True, text=True)
    if r.returncode == 0:
        log(f"torch {r.stdout.strip()} is already importable in bench/.venv; skipping pip install")
        return r.stdout.strip()
    log("torch is not importable in bench/.venv; running pip install torch (PyPI)")
    log("note: PyPI's Linux torch wheel pulls the CUDA wheels (~5 GB) even for CPU use; "
        "pip caches them, so a second install is quicker")
    subprocess.run([sys.executable, "-m", "pip", "install", "torch"], check=True)
    r = subprocess.run(probe, capture_output=True, text=True, check=True)
    log(f"installed torch {r.stdout.strip()}")
    return r.stdout.strip()


# --------------------------------------------------------------------------------------------
# 2. The config, read as keel reads it.
# --------------------------------------------------------------------------------------------


def load_config(path: Path) -> dict:
    import tomllib

    with open(path, "rb") as f:
        raw = tomllib.load(f)
    cfg = {}
    for section, defaults in DEFAULTS.items():
        cfg[section] = {**defaults, **raw.get(section, {})}
    return cfg


# --------------------------------------------------------------------------------------------
# 3. The PyTorch side (runs in a subprocess: OpenMP reads its environment at import).
# --------------------------------------------------------------------------------------------


def build_torch_model(cfg: dict):
    """The model of trainer/src/model.rs and its initialisation from trainer/src/params.rs."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    m, st = cfg["model"], cfg["stability"]
    d, L, H, V, T = m["d_model"], m["n_layers"], m["n_heads"], m["vocab_size"], m["seq_len"]
    kvh = m["n_kv_heads"] or H
    hd, f, eps = d // H, m["d_ffn"], m["norm_eps"]
    mup = st["init"] == "mup"
    base_std = {
        "normal_0.02": 0.02,
        "scaled": math.sqrt(2 / (5 * d)),
        "mup": math.sqrt(2 / (5 * st["mup_base_width"])),
    }[st["init"]]
    width_ratio = d / st["mup_base_width"] if mup else 1.0
    in_std = base_std / math.sqrt(width_ratio)
    out_std = in_std if st["init"] == "normal_0.02" else in_std / math.sqrt(2 * L)
    residual_scale = 1.4 / math.sqrt(L) if st["depth_mup"] else 1.0

    class Linear(nn.Module):
        """x @ (alpha * W~)^T; plain W when WeSaR is off."""

        def __init__(self, n_out: int, n_in: int, std: float):
            super().__init__()
            if st["wesar"]:
                self.weight = nn.Parameter(torch.randn(n_out, n_in) * st["wesar_std"])
                self.alpha = nn.Parameter(torch.tensor([std / base_std]))
            else:
                self.weight = nn.Parameter(torch.randn(n_out, n_in) * std)
                self.alpha = None

        def forward(self, x):
            w = self.weight if self.alpha is None else self.weight * self.alpha
            return F.linear(x, w)

    class RMSNorm(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.weight

    def rope_tables(t: int):
        i = torch.arange(hd // 2, dtype=torch.float64)
        freq = m["rope_theta"] ** (-2 * i / hd)
        angle = torch.arange(t, dtype=torch.float64)[:, None] * freq[None, :]
        return angle.cos().float(), angle.sin().float()  # [t, hd/2]

    def rope(x, cos, sin):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn_norm = RMSNorm(d)
            self.q = Linear(d, d, in_std)
            self.k = Linear(kvh * hd, d, in_std)
            self.v = Linear(kvh * hd, d, in_std)
            self.o = Linear(d, d, out_std)
            self.q_norm = RMSNorm(hd) if st["qk_norm"] else None
            self.k_norm = RMSNorm(hd) if st["qk_norm"] else None
            self.mlp_norm = RMSNorm(d)
            self.gate = Linear(f, d, in_std)
            self.up = Linear(f, d, in_std)
            self.down = Linear(d, f, out_std)

        def attention(self, x, cos, sin, mask):
            b, t, _ = x.shape
            q = self.q(x).view(b, t, H, hd).transpose(1, 2)
            k = self.k(x).view(b, t, kvh, hd).transpose(1, 2)
            v = self.v(x).view(b, t, kvh, hd).transpose(1, 2)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            if kvh != H:
                k = k.repeat_interleave(H // kvh, dim=1)
                v = v.repeat_interleave(H // kvh, dim=1)
            scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(hd)) + mask
            y = torch.softmax(scores, dim=-1) @ v
            return self.o(y.transpose(1, 2).reshape(b, t, d))

        def forward(self, x, cos, sin, mask):
            x = x + self.attention(self.attn_norm(x), cos, sin, mask) * residual_scale
            h = self.mlp_norm(x)
            return x + self.down(F.silu(self.gate(h)) * self.up(h)) * residual_scale

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Parameter(torch.randn(V, d) * base_std)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.final_norm = RMSNorm(d)
            cos, sin = rope_tables(T)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
            mask = torch.full((T, T), float("-inf")).triu(1)
            self.register_buffer("mask", mask, persistent=False)

        def forward(self, tokens):
            b, t = tokens.shape
            x = self.embed[tokens] * st["emb_multiplier"]
            cos, sin, mask = self.cos[:t], self.sin[:t], self.mask[:t, :t]
            for block in self.blocks:
                x = block(x, cos, sin, mask)
            x = self.final_norm(x)
            return x.reshape(b * t, d) @ self.embed.t()

    model = Model()
    return model, width_ratio


def torch_loss(logits, targets, z_coef: float):
    """Cross-entropy + z_coef * mean(logsumexp^2), as model::loss."""
    import torch

    lse = torch.logsumexp(logits, dim=-1)
    ce = (lse - logits.gather(1, targets[:, None]).squeeze(1)).mean()
    z = lse.pow(2).mean() * z_coef
    return (ce + z if z_coef > 0 else ce), ce


def make_optimizer(model, cfg: dict, width_ratio: float):
    """AdamW with keel's groups (trainer/src/optim.rs): matrices decayed and at LR / m."""
    import torch

    o, st = cfg["optim"], cfg["stability"]
    matrix_mult = 1.0 / width_ratio if (st["init"] == "mup" and o["mup_lr"]) else 1.0
    matrices, embed, rest = [], [], []
    for name, p in model.named_parameters():
        if name == "embed":
            embed.append(p)
        elif name.endswith(".weight") and p.dim() == 2:
            matrices.append(p)
        else:  # norm gains and WeSaR alphas
            rest.append(p)
    groups = [
        {"params": matrices, "lr_mult": matrix_mult, "weight_decay": o["weight_decay"]},
        {"params": embed, "lr_mult": 1.0,
         "weight_decay": o["weight_decay"] if o["decay_embedding"] else 0.0},
        {"params": rest, "lr_mult": 1.0, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"])


def torch_worker(config: Path, threads: int, steps: int) -> None:
    """Train `steps` timed steps after the warm-up; print one JSON line with the step times."""
    import torch

    torch.set_num_threads(threads)
    cfg = load_config(config)
    torch.manual_seed(cfg["run"]["seed"])
    model, width_ratio = build_torch_model(cfg)
    opt = make_optimizer(model, cfg, width_ratio)
    b, t, V = cfg["run"]["batch_size"], cfg["model"]["seq_len"], cfg["model"]["vocab_size"]
    lr, warmup = cfg["optim"]["lr"], cfg["schedule"]["warmup_steps"]
    clip, z_coef = cfg["optim"]["grad_clip"], cfg["stability"]["z_loss"]
    params = list(model.parameters())

    def step(i: int) -> float:
        batch = torch.randint(0, V, (b, t + 1))
        inputs, targets = batch[:, :-1], batch[:, 1:].reshape(-1)
        logits = model(inputs)
        total, ce = torch_loss(logits, targets, z_coef)
        opt.zero_grad(set_to_none=True)
        total.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        base = lr * min(1.0, (i + 1) / warmup) if warmup > 0 else lr
        for g in opt.param_groups:
            g["lr"] = base * g["lr_mult"]
        opt.step()
        return ce.item()

    for i in range(WARMUP_STEPS):
        step(i)
    times, loss = [], float("nan")
    for i in range(WARMUP_STEPS, WARMUP_STEPS + steps):
        t0 = time.perf_counter()
        loss = step(i)
        times.append(time.perf_counter() - t0)
    print(json.dumps({
        "params": sum(p.numel() for p in params),
        "threads": torch.get_num_threads(),
        "step_times_s": times,
        "last_loss": loss,
    }), flush=True)


def run_torch(config: Path, threads: int, steps: int, passive: bool) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    argv = [sys.executable, str(Path(__file__).resolve()), "--torch-worker",
            "--config", str(config), "--threads", str(threads), "--worker-steps", str(steps)]
    r = subprocess.run(argv, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"torch worker failed:\n{r.stderr[-4000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    med = statistics.median(out["step_times_s"])
    out["median_step_s"] = med
    return out


# --------------------------------------------------------------------------------------------
# 4. The keel side.
# --------------------------------------------------------------------------------------------


def ensure_keel_bench(override: str | None) -> Path:
    if override:
        path = Path(override).resolve()
        if not path.is_file():
            sys.exit(f"--keel-bin {override}: no such file")
        log(f"using keel bench binary {path}")
        return path
    log("cargo build --release -p keel-trainer --examples "
        "(a no-op when up to date; may wait for another cargo)")
    t0 = time.perf_counter()
    subprocess.run(["cargo", "build", "--release", "-p", "keel-trainer", "--examples"],
                   cwd=ROOT, check=True)
    log(f"cargo finished in {time.perf_counter() - t0:.1f} s")
    path = ROOT / "target" / "release" / "examples" / "bench"
    if not path.is_file():
        sys.exit(f"cargo built, but {path} is missing")
    return path


def run_keel(binary: Path, config: Path, threads: int, rounds: int,
             candle_threads: int | None = None) -> dict:
    """One `bench` run; parses its ms/step lines (see trainer/examples/bench.rs).

    Without `candle_threads`: what `keel train` runs with by itself (trainer/src/device.rs,
    `recommended_thread_env`): one candle thread, `threads` rayon threads, and mimalloc keeping
    freed pages. With it: candle's own thread count, the allocator's defaults."""
    if candle_threads is None:
        env = dict(os.environ, CANDLE_NUM_THREADS="1", RAYON_NUM_THREADS=str(threads),
                   MIMALLOC_PURGE_DELAY="-1", MIMALLOC_ARENA_EAGER_COMMIT="2")
    else:
        env = dict(os.environ, CANDLE_NUM_THREADS=str(candle_threads),
                   RAYON_NUM_THREADS=str(threads))
    r = subprocess.run([str(binary), str(config), str(rounds)], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"keel bench failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    out: dict = {"stdout": r.stdout}
    for line in r.stdout.splitlines():
        if line.startswith("params "):
            out["params"] = int(line.split()[1])
        elif line.startswith("no per-layer statistics:"):
            out["median_step_s"] = float(line.split(":")[1].split("ms/step")[0]) / 1e3
        elif line.startswith("all statistics every step:"):
            out["median_step_s_with_stats"] = float(line.split(":")[1].split("ms/step")[0]) / 1e3
    if "median_step_s" not in out:
        sys.exit(f"could not parse keel bench output:\n{r.stdout}")
    return out


# --------------------------------------------------------------------------------------------
# 5. The comparison.
# --------------------------------------------------------------------------------------------


def measure(name: str, fn, tokens: int) -> dict:
    before = loadavg()
    t0 = time.perf_counter()
    res = fn()
    res.update(name=name, wall_s=round(time.perf_counter() - t0, 2),
               load_before=before, load_after=loadavg(),
               tokens_per_s=tokens / res["median_step_s"])
    res.pop("stdout", None)
    log(f"  {name:<22} {res['median_step_s'] * 1e3:7.1f} ms/step  "
        f"{res['tokens_per_s']:7.0f} tokens/s  (load {res['load_after'][0]:.2f})")
    return res


def summarise(runs: list[dict], names: list[str]) -> dict:
    out = {}
    for n in names:
        tps = [r["tokens_per_s"] for r in runs if r["name"] == n]
        out[n] = {"median_tokens_per_s": statistics.median(tps), "per_round": tps}
    return out


def table(summary: dict, keel: str, others: list[str]) -> str:
    k = summary[keel]["median_tokens_per_s"]
    rows = ["| side | tokens/s (median of rounds) | per round | ÷ keel |",
            "|---|---:|---|---:|"]
    for n in [keel, *others]:
        v = summary[n]["median_tokens_per_s"]
        per = ", ".join(f"{x:.0f}" for x in summary[n]["per_round"])
        ratio = "" if n == keel else f"{v / k:.2f}×"
        rows.append(f"| {n} | {v:.0f} | {per} | {ratio} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "proxy-small.toml"))
    ap.add_argument("--threads", type=int, default=2, help="compute threads on both sides")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--keel-rounds", type=int, default=4,
                    help="bench.rs rounds per measurement (5 timed steps each); torch times "
                         "the same number of steps")
    ap.add_argument("--no-passive", action="store_true",
                    help="skip the OMP_WAIT_POLICY=PASSIVE torch variant")
    ap.add_argument("--no-keel-shared", action="store_true",
                    help="skip the keel variant with candle's own threads "
                         "(CANDLE_NUM_THREADS = --threads) and the allocator's defaults")
    ap.add_argument("--keel-bin", help="a built target/release/examples/bench (skips cargo)")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-steps", type=int, default=20, help=argparse.SUPPRESS)
    args = ap.parse_args()
    config = Path(args.config).resolve()

    if args.torch_worker:
        torch_worker(config, args.threads, args.worker_steps)
        return

    load_start = loadavg()
    ensure_venv_and_reexec()
    torch_version = ensure_torch()
    binary = ensure_keel_bench(args.keel_bin)
    cfg = load_config(config)
    tokens = cfg["run"]["batch_size"] * cfg["model"]["seq_len"]
    steps = STEPS_PER_ROUND * args.keel_rounds
    log(f"config {config.relative_to(ROOT) if config.is_relative_to(ROOT) else config}: "
        f"batch {cfg['run']['batch_size']} x seq {cfg['model']['seq_len']} = {tokens} tokens/step, "
        f"{args.threads} threads, {args.rounds} rounds of {steps} timed steps per side")

    variants = [("keel", lambda: run_keel(binary, config, args.threads, args.keel_rounds)),
                ("torch", lambda: run_torch(config, args.threads, steps, passive=False))]
    if not args.no_passive:
        variants.append(("torch OMP PASSIVE",
                         lambda: run_torch(config, args.threads, steps, passive=True)))
    if not args.no_keel_shared and args.threads > 1:
        # candle's own threads and the allocator's defaults: keel before `keel train` chose
        # its settings itself.
        variants.insert(1, ("keel candle threads",
                            lambda: run_keel(binary, config, args.threads, args.keel_rounds,
                                             candle_threads=args.threads)))
    names = [n for n, _ in variants]
    torch_names = [n for n in names if n.startswith("torch")]

    load_before = loadavg()
    runs = []
    for r in range(args.rounds):
        log(f"round {r + 1}/{args.rounds}")
        for name, fn in variants:
            runs.append(dict(measure(name, fn, tokens), round=r + 1))
    load_after = loadavg()

    params = {n: next(x["params"] for x in runs if x["name"] == n) for n in names}
    if len(set(params.values())) != 1:
        log(f"WARNING: parameter counts differ: {params}")
    summary = summarise(runs, names)
    md = table(summary, "keel", names[1:])
    k = summary["keel"]["median_tokens_per_s"]
    best_torch = max(summary[n]["median_tokens_per_s"] for n in torch_names)
    print()
    print(md)
    print()
    print(f"params {params['keel']} (keel) / {params['torch']} (torch); "
          f"load average (1/5/15 min) before {load_before}, after {load_after}")
    print(f"torch (best variant) ÷ keel = {best_torch / k:.2f}× (goal: ≤ 1.5×)")

    OUT.mkdir(exist_ok=True)
    result = {
        "config": str(config),
        "threads": args.threads,
        "rounds": args.rounds,
        "timed_steps_per_measurement": steps,
        "tokens_per_step": tokens,
        "params": params,
        "torch_version": torch_version,
        "python": platform.python_version(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average": {"at_start": load_start, "before": load_before, "after": load_after},
        "summary": summary,
        "ratio_over_keel": {n: summary[n]["median_tokens_per_s"] / k for n in names[1:]},
        "runs": runs,
        "table_markdown": md,
    }
    path = OUT / "torch_compare.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
