"""Two ranks under torchrun (gloo, CPU), one keel run: rank 0 owns it, both obey Control.

Rank 1 is a straggler: it sleeps in its data loading, and each rank passes the time up to
its backward (its own work, before DDP's all-reduce evens the ranks out) as its step time.
At the end each rank prints its last step and a checksum of its parameters.
"""

import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

import keel
import keel.torch

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(3)], nn.Linear(16, 1))
ddp = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
run = keel.init(name="ddp", group="pytorch") if rank == 0 else None
if rank == 0:
    keel.torch.watch(model, opt, blocks=list(model)[:3])
ctl = keel.torch.Control(run, opt)
gen = torch.Generator().manual_seed(rank)
step = 0
while step < 100_000:
    t0 = time.perf_counter()
    if rank == 1:
        time.sleep(0.02)
    x = torch.randn(32, 16, generator=gen)
    loss = ddp(x).square().mean()
    busy = time.perf_counter() - t0
    loss.backward()
    opt.step()
    opt.zero_grad()
    if rank == 0:
        run.log({"loss": loss}, step=step)
    if ctl.step(step, tokens=32, step_time=busy):
        break
    time.sleep(0.005)
    step += 1
checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
with open(f"rank-{rank}.txt", "w") as f:
    f.write(f"stopped at step {step} lr {opt.param_groups[0]['lr']:.6g} checksum {checksum:.12g}\n")
if rank == 0:
    run.finish()
ctl.close()
dist.destroy_process_group()
