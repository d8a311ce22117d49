"""A small GPT in plain PyTorch, streamed into keel and steered from keel's run page.

    keel demo                                   # in one terminal: prints the server and token
    pip install ./python torch
    KEEL_TOKEN=<token> python examples/pytorch_gpt.py --server http://127.0.0.1:8080

Open the run's page (the script prints it): loss, LR and per-layer heatmaps stream in, and
Pause, Set LR, Anneal, Data mix, Checkpoint, Rewind and Stop act on this loop. The data is
two synthetic sources: `web` (Zipf-distributed tokens, hard) and `code` (repeated patterns,
easy), so a data-mix switch shows in the per-source losses.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
import keel  # noqa: E402
import keel.torch  # noqa: E402


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.norm2 = nn.RMSNorm(d)
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).transpose(1, 3).unbind(2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, seq: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(seq, d))
        self.layers = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm = nn.RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx) + self.pos[: idx.shape[1]]
        for block in self.layers:
            x = block(x)
        return self.head(self.norm(x))


class Data:
    """Two synthetic sources; each row's source is drawn by the mix."""

    def __init__(self, vocab: int, seq: int, seed: int):
        self.vocab, self.seq = vocab, seq
        self.gen = torch.Generator().manual_seed(seed)
        ranks = torch.arange(1, vocab + 1, dtype=torch.float64)
        self.zipf = (1 / ranks) / (1 / ranks).sum()

    def row(self, source: str) -> torch.Tensor:
        n = self.seq + 1
        if source == "web":
            return torch.multinomial(self.zipf, n, replacement=True, generator=self.gen)
        period = int(torch.randint(2, 6, (1,), generator=self.gen))
        motif = torch.randint(0, self.vocab, (period,), generator=self.gen)
        return motif.repeat(n // period + 1)[:n]

    def batch(self, sources: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.stack([self.row(s) for s in sources])
        return rows[:, :-1], rows[:, 1:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default=os.environ.get("KEEL_SERVER", "http://127.0.0.1:8080"))
    ap.add_argument("--token", default=os.environ.get("KEEL_TOKEN"))
    ap.add_argument("--name", default="pytorch-gpt")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--checkpoints", default="checkpoints/pytorch-gpt")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds to sleep per step (to watch it live)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    vocab = 64
    model = GPT(vocab, args.d_model, args.layers, heads=4, seq=args.seq)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))
    data = Data(vocab, args.seq, args.seed)
    mix = keel.torch.MixtureSampler({"web": 0.5, "code": 0.5}, seed=args.seed)
    ckpt_dir = Path(args.checkpoints)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {"next": 0}

    def save(step: int) -> str:
        path = ckpt_dir / f"step-{step}.pt"
        torch.save({"step": step, "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "ctl": ctl.state_dict(), "mix": mix.weights, "rng": (data.gen.get_state(), mix._rng.getstate())}, path)
        return str(path)

    def rewind(step: int, skip_batches: int) -> None:
        ck = torch.load(ckpt_dir / f"step-{step}.pt", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        ctl.load_state_dict(ck["ctl"])
        mix.set_weights(ck["mix"])
        data.gen.set_state(ck["rng"][0])
        mix._rng.setstate(ck["rng"][1])
        for _ in range(skip_batches):  # step past the batches that made the spike
            data.batch(mix.draw(args.batch))
        state["next"] = step + 1

    run = keel.init(name=args.name, group="pytorch", server=args.server, token=args.token, config={k: v for k, v in vars(args).items() if k not in ("token", "server")})
    keel.torch.watch(model, opt)
    ctl = keel.torch.Control(run, opt, sched, max_grad_norm=args.clip, on_checkpoint=save, on_rewind=rewind, on_data_mix=mix.set_weights)
    print(f"keel: {run.url}", flush=True)

    step = 0
    while step < args.steps:
        sources = mix.draw(args.batch)
        x, y = data.batch(sources)
        logits = model(x)
        per_row = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1), reduction="none").view(len(sources), -1).mean(1)
        loss = per_row.mean()
        loss.backward()
        ctl.clip_grad_norm_()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        run.log({"loss": loss, **keel.torch.loss_by_source(per_row, sources), "tokens": (step + 1) * args.batch * args.seq}, step=step)
        if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0:
            save(step)
            ctl.add_checkpoint(step)
        if args.delay:
            time.sleep(args.delay)
        state["next"] = step + 1
        if ctl.step(step, tokens=args.batch * args.seq):
            break
        step = state["next"]
    run.finish()
    print(f"keel: finished at step {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
