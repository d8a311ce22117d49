"""What keel's Python taps cost a PyTorch step: the CPU example with and without them.

    KEEL_PYTHON=$(scripts/python-env.sh)
    $KEEL_PYTHON bench/taps.py --keel-bin target/release/keel
    $KEEL_PYTHON bench/taps.py --keel-bin target/release/keel --layers 8 --d-model 256 --batch 16 --seq 128

The model is examples/pytorch_gpt.py's GPT on its synthetic data. All four setups are
built at once, each with its own model, and a round trains `--steps` steps of each in turn,
in an order that rotates every round (so that the machine's drift touches all alike), after
a warm-up of 5 steps each: `bare` (the loop alone); `log` (+ `run.log` of the loss and per-source losses);
`watch` (+ `keel.torch.watch` every step: the three residual statistics of every block, the
per-block gradient, parameter and update norms and the global gradient norm; with
`--update-ratio` off, without the copy of the matrices); `control` (+ `keel.torch.Control`:
clipping through it, its step boundary and command poll). Every setup but `bare` streams to
a real `keel serve` started here, on a fresh SQLite file. Reported: the median step time of
each setup over all its steps, and the overhead against `bare`. `watch` measures
`update_ratio` on every 10th step (its default `update_every`), the rest at every step.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "examples"))
import keel  # noqa: E402
import keel.torch  # noqa: E402
from pytorch_gpt import GPT, Data  # noqa: E402

SETUPS = ("bare", "log", "watch", "control")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(keel_bin: str, folder: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [keel_bin, "serve", "--db", f"{folder}/bench.db", "--addr", f"127.0.0.1:{port}", "--token", "bench-token"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"keel serve did not answer at {url}")


class Setup:
    """One model and its loop, in one of SETUPS; `steps(n)` trains n steps and times each."""

    def __init__(self, setup: str, args, url: str, folder: str):
        torch.manual_seed(0)
        self.args = args
        self.vocab = 64
        self.model = GPT(self.vocab, args.d_model, args.layers, heads=4, seq=args.seq)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.data = Data(self.vocab, args.seq, 0)
        self.mix = keel.torch.MixtureSampler({"web": 0.5, "code": 0.5})
        self.run = self.ctl = None
        if setup != "bare":
            # Runs side by side: keel.Run, as keel.init would finish the one before.
            self.run = keel.Run(name=setup, server=url, token="bench-token", dir=folder, layers=args.layers)
        if setup in ("watch", "control"):
            keel.torch.watch(self.model, self.opt, run=self.run, update_ratio=args.update_ratio)
        if setup == "control":
            self.ctl = keel.torch.Control(self.run, self.opt, max_grad_norm=1.0)
        self.step = 0

    def steps(self, n: int) -> list[float]:
        args, run, ctl = self.args, self.run, self.ctl
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            sources = self.mix.draw(args.batch)
            x, y = self.data.batch(sources)
            logits = self.model(x).reshape(-1, self.vocab)
            per_row = F.cross_entropy(logits, y.reshape(-1), reduction="none").view(args.batch, -1).mean(1)
            loss = per_row.mean()
            loss.backward()
            if ctl is not None:
                ctl.clip_grad_norm_()
            else:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if run is not None:
                run.log({"loss": loss, **keel.torch.loss_by_source(per_row, sources)}, step=self.step)
            if ctl is not None:
                ctl.step(self.step)
            elif run is not None:
                run.commit()
            self.step += 1
            times.append(time.perf_counter() - t0)
        return times

    def close(self) -> None:
        if self.ctl is not None:
            self.ctl.close()
        if self.run is not None:
            self.run.finish()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keel-bin", default=str(ROOT / "target/release/keel"))
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--update-ratio", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        server, url = start_server(args.keel_bin, folder)
        try:
            setups = {s: Setup(s, args, url, folder) for s in SETUPS}
            for setup in setups.values():
                setup.steps(5)  # warm-up
            results: dict[str, list[float]] = {s: [] for s in SETUPS}
            for r in range(args.rounds):
                order = SETUPS[r % len(SETUPS):] + SETUPS[: r % len(SETUPS)]
                for name in order:
                    results[name] += setups[name].steps(args.steps)
                if (r + 1) % 10 == 0 or r + 1 == args.rounds:
                    print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{s} {statistics.median(results[s]) * 1e3:.2f} ms" for s in SETUPS), file=sys.stderr)
            for setup in setups.values():
                setup.close()
        finally:
            server.terminate()
            server.wait()
    load = os.getloadavg()[0]
    params = sum(p.numel() for p in GPT(64, args.d_model, args.layers, 4, args.seq).parameters())
    print(f"\nGPT d={args.d_model} L={args.layers} batch={args.batch} seq={args.seq} ({params:,} parameters), "
          f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds × {args.steps} steps of each, load {load:.1f}\n")
    print("| setup | median step (ms) | overhead vs bare |")
    print("| --- | ---: | ---: |")
    bare = statistics.median(results["bare"])
    for s in SETUPS:
        m = statistics.median(results[s])
        print(f"| {s} | {m * 1e3:.2f} | {'—' if s == 'bare' else f'{(m / bare - 1) * 100:+.1f} %'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
