"""keel for PyTorch: per-layer taps on any model, and operator commands at step boundaries.

    run = keel.init(name="gpt", config=cfg)
    keel.torch.watch(model, optimizer)                  # per-block statistics
    ctl = keel.torch.Control(run, optimizer, scheduler)  # pause, LR, anneal, stop, ...
    for step in range(steps):
        loss = model(x, y); loss.backward()
        ctl.clip_grad_norm_(model.parameters())          # optional; makes set_grad_clip work
        optimizer.step(); scheduler.step(); optimizer.zero_grad()
        run.log({"loss": loss}, step=step)
        if ctl.step(step):
            break

The statistics are keel's (docs/api.md, "Step records"), computed on the device: nothing
here reads a tensor back on the training thread. Each logged step's values are gathered into
one tensor, which the sender thread reads with one transfer.
"""

from __future__ import annotations

import math
import random
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from . import Run, _wire
from ._http import Refused, Unreachable

__all__ = ["watch", "Watch", "Control", "MixtureSampler", "loss_by_source", "find_blocks", "clip_grad_norm_"]

# Where the transformer blocks are in common model layouts, tried in order.
BLOCK_PATHS = ("model.layers", "model.model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "layers", "blocks", "h")


def _default_run(run: Run | None) -> Run:
    import keel

    run = run or keel.run
    if run is None:
        raise RuntimeError("keel.init() first, or pass run=")
    return run


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a model: `model.layers`, `model.model.layers`,
    `transformer.h`, `blocks`, ... (a ModuleList, or a ModuleDict as torchtitan keeps them)."""
    for path in BLOCK_PATHS:
        m: Any = model
        for part in path.split("."):
            m = getattr(m, part, None)
            if m is None:
                break
        if isinstance(m, nn.ModuleList) and len(m) > 0:
            return list(m)
        if isinstance(m, nn.ModuleDict) and len(m) > 0:
            return list(m.values())
    raise ValueError(
        f"keel could not find the transformer blocks of {type(model).__name__} "
        f"(looked for {', '.join(BLOCK_PATHS)}); pass them: watch(model, blocks=model.my_blocks)"
    )


def _is_norm(m: nn.Module) -> bool:
    return "norm" in type(m).__name__.lower()


class Watch:
    """Taps a model's blocks. Made by `watch`; see there."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, blocks: Sequence[nn.Module] | None, every: int, run: Run, update_ratio: bool, update_every: int = 10):
        if every < 1 or update_every < 1:
            raise ValueError(f"`every` and `update_every` must be at least 1, got {every} and {update_every}")
        self.update_every = update_every
        self.model = model
        self.blocks = list(blocks) if blocks is not None else find_blocks(model)
        self.every = every
        self.run = run
        self.n = len(self.blocks)
        run.set_layers(self.n)
        self._update_ratio = update_ratio and optimizer is not None
        # Every trainable parameter, with its block (n for those outside every block).
        owner: dict[int, int] = {}
        for i, block in enumerate(self.blocks):
            for p in block.parameters():
                owner.setdefault(id(p), i)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.owner = [owner.get(id(p), self.n) for p in self.params]
        # The blocks' matrices (param_norm, update_ratio) and norm gains (norm_gain).
        self.matrices: list[torch.Tensor] = []
        self.matrix_owner: list[int] = []
        self.gains: list[torch.Tensor] = []
        self.gain_owner: list[int] = []
        for i, block in enumerate(self.blocks):
            # The gains of its norms (`weight`; a LayerNorm's bias is neither a gain nor a matrix).
            gain_ids = {id(p) for m in block.modules() if _is_norm(m) for name, p in m.named_parameters(recurse=False) if name == "weight" and p.dim() == 1}
            for p in block.parameters():
                if id(p) in gain_ids:
                    self.gains.append(p)
                    self.gain_owner.append(i)
                elif p.dim() >= 2:
                    self.matrices.append(p)
                    self.matrix_owner.append(i)
        self._steps = 0  # optimizer steps taken
        self._indices: dict = {}
        self._gain_count: torch.Tensor | None = None
        self._fwd: list[torch.Tensor | None] = [None] * self.n
        self._grads: tuple[torch.Tensor, torch.Tensor] | None = None  # per block, global
        self._clipped: torch.Tensor | None = None
        self._grads_at = -1  # the optimizer step whose grads were measured
        self._before: list[torch.Tensor] | None = None
        self._params: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        self._handles = [b.register_forward_hook(self._hook(i)) for i, b in enumerate(self.blocks)]
        if optimizer is not None:
            optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
            self._handles.append(optimizer.register_step_pre_hook(self._pre_step))
            self._handles.append(optimizer.register_step_post_hook(self._post_step))
        run._taps.append(self)

    @property
    def active(self) -> bool:
        """Whether this optimizer step's statistics are taken (every `every` steps)."""
        return self._steps % self.every == 0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if self in self.run._taps:
            self.run._taps.remove(self)

    # ---- forward ----

    def _hook(self, i: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            # Training forwards only (an evaluation under no_grad does not overwrite them).
            if not self.active or not module.training or not torch.is_grad_enabled():
                return
            h = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(h, torch.Tensor) or h.dim() < 1:
                return
            with torch.no_grad():
                x = h.detach()
                if x.dtype != torch.float32 and x.dtype != torch.float64:
                    x = x.float()
                # Population variance over the hidden dimension per token, E[x²] − E[x]² as
                # keel's trainer takes it, then the mean over tokens; hidden_rms² =
                # hidden_var + mean² (averaged over tokens). Few, fast ops (on the CPU,
                # torch.var_mean is ten times slower than these together).
                lo, hi = torch.aminmax(x)
                # [E[x²], E[E[x]²], min, max] over tokens; the difference (hidden_var), the
                # square root (hidden_rms) and |·| come at collect, for every block at once.
                self._fwd[i] = torch.stack([x.square().mean(), x.mean(-1).square().mean(), lo, hi])

        return hook

    # ---- gradients ----

    def measure_grads(self, clip: float | None = None) -> torch.Tensor:
        """Per-block and global gradient norms, before clipping; with `clip`, clips to it.

        Returns the global norm (a tensor on the device). One foreach kernel for the norms.
        """
        pairs = [(p.grad, o) for p, o in zip(self.params, self.owner) if p.grad is not None]
        if not pairs:
            return torch.zeros(())
        grads = [g for g, _ in pairs]
        device = grads[0].device
        norms = torch._foreach_norm(grads)
        sq = _stack(norms, device).square()
        index = self._index(tuple(o for _, o in pairs), device)
        per_block = torch.zeros(self.n + 1, device=device, dtype=sq.dtype).index_add_(0, index, sq)
        total = per_block.sum().sqrt()
        if clip is not None:
            coef = (clip / (total + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_(grads, coef.to(grads[0].dtype))
            self._clipped = (total > clip).float()
        else:
            self._clipped = None
        if self.active:
            self._grads = (per_block[: self.n].sqrt(), total)
            self._grads_at = self._steps
        return total

    # ---- the optimizer step ----

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self.active:
            return
        if self._grads_at != self._steps:
            # Nobody clipped through keel: the gradients as the optimizer sees them.
            self.measure_grads()
        if self._update_ratio and self.matrices and self._steps % (self.every * self.update_every) == 0:
            with torch.no_grad():
                self._before = torch._foreach_mul(self.matrices, 1.0)  # copies, in one call

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.active:
            with torch.no_grad():
                self._measure_params()
        self._steps += 1

    def _measure_params(self) -> None:
        """param_norm, update_ratio and norm_gain of every block: one foreach norm over the
        matrices, their updates and the gains together, one sum into per-block slots."""
        if not self.matrices:
            return
        device = self.matrices[0].device
        tensors = list(self.matrices)
        # slot k*n + i: kind k (0 matrices, 1 updates, 2 gains) of block i
        owner = list(self.matrix_owner)
        ratio = self._before is not None
        if ratio:
            tensors += torch._foreach_sub(self.matrices, self._before)
            owner += [self.n + i for i in self.matrix_owner]
            self._before = None
        tensors += self.gains
        owner += [2 * self.n + i for i in self.gain_owner]
        sq = _stack(torch._foreach_norm(tensors), device).square()
        slots = torch.zeros(3 * self.n, device=device, dtype=sq.dtype).index_add_(0, self._index(tuple(owner), device), sq)
        if self._gain_count is None:
            count = [0.0] * self.n
            for g, i in zip(self.gains, self.gain_owner):
                count[i] += g.numel()
            self._gain_count = torch.tensor([max(c, 1.0) for c in count], device=device, dtype=sq.dtype)
        norms = slots.view(3, self.n).sqrt()
        self._params = (
            norms[0],
            norms[1] / norms[0].clamp(min=1e-30) if ratio else None,
            (slots[2 * self.n :] / self._gain_count).sqrt() if self.gains else None,
        )

    def _per_block(self, norms: list[torch.Tensor], owner: list[int], device: torch.device) -> torch.Tensor:
        sq = _stack(norms, device).square()
        return torch.zeros(self.n, device=device, dtype=sq.dtype).index_add_(0, self._index(tuple(owner), device), sq)

    def _index(self, owner: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The block index of each tensor, on the device: made once, not at every step."""
        key = (owner, device)
        t = self._indices.get(key)
        if t is None:
            t = self._indices[key] = torch.tensor(owner, device=device)
        return t

    # ---- into the run's next row ----

    def collect(self, row: _wire.Row) -> None:
        """Adds what was measured since the last row to `row` (tensors; read later)."""
        if all(f is not None for f in self._fwd):
            device = self._fwd[0].device
            stats = torch.stack([f if f.device == device else f.to(device) for f in self._fwd])  # [n, 4]
            row.layers.setdefault("hidden_var", stats[:, 0] - stats[:, 1])
            row.layers.setdefault("hidden_rms", stats[:, 0].sqrt())
            row.layers.setdefault("act_absmax", torch.maximum(-stats[:, 2], stats[:, 3]))
        self._fwd = [None] * self.n
        if self._grads is not None:
            per_block, total = self._grads
            row.layers.setdefault("grad_norm", per_block)
            row.scalars.setdefault("grad_norm", total)
            if self._clipped is not None:
                row.scalars.setdefault("grad_clipped", self._clipped)
            self._grads = None
        if self._params is not None:
            norm, ratio, gain = self._params
            row.layers.setdefault("param_norm", norm)
            if ratio is not None:
                row.layers.setdefault("update_ratio", ratio)
            if gain is not None:
                row.layers.setdefault("norm_gain", gain)
            self._params = None


def _stack(norms: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Norms as one tensor on `device`, in float32 (float64 when they are float64)."""
    dtypes = {n.dtype for n in norms}
    dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    if len(dtypes) == 1 and all(n.device == device for n in norms):
        return torch.stack(norms).to(dtype)  # the usual case: one kernel, one cast
    return torch.stack([n.to(device=device, dtype=dtype) for n in norms])


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    blocks: Sequence[nn.Module] | None = None,
    every: int = 1,
    run: Run | None = None,
    update_ratio: bool = True,
    update_every: int = 10,
) -> Watch:
    """Taps the transformer blocks of `model` for keel's per-layer statistics.

    Every `every` optimizer steps: `hidden_var`, `hidden_rms`, `act_absmax` of each block's
    output; with `optimizer`, per-block `grad_norm` (before clipping when the loop clips with
    `Control.clip_grad_norm_`, else as the optimizer sees them), `param_norm` and
    `update_ratio` (‖ΔW‖/‖W‖ of the block's matrices, on every `update_every`-th tapped step:
    it copies those matrices before the optimizer step, which costs about a third of an
    AdamW step; `update_ratio=False` never does), `norm_gain` (the RMS of the
    blocks' norm gains), and the global `grad_norm`. `blocks` defaults to `find_blocks(model)`.
    Register before `torch.compile`.
    """
    return Watch(model, optimizer, blocks, every, _default_run(run), update_ratio, update_every)


def clip_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` without a host sync (for loops that do not watch)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = _stack(torch._foreach_norm(grads), grads[0].device).square().sum().sqrt()
    torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp(max=1.0).to(grads[0].dtype))
    return total


# ---- commands ----

def decay_factor(shape: str, progress: float) -> float:
    """keel's WSD decay shapes: the fraction of the way from the final LR to the start LR."""
    p = min(max(progress, 0.0), 1.0)
    if shape == "linear":
        return 1.0 - p
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    return 1.0 - math.sqrt(p)


class _Rejected(Exception):
    pass


class Control:
    """Operator commands for a PyTorch loop, applied at step boundaries.

    Call `ctl.step(step)` once per step, after the optimizer (and scheduler) step of `step`;
    it returns True when the loop must stop. A background thread long-polls keel (rank 0
    only); each command is applied once, at the boundary, and reported `applied` (at the
    step that first trains with it, `step + 1`) or `rejected` with the reason.

    - `pause`/`resume`: `step` blocks until resumed (or stopped).
    - `stop`: `on_checkpoint` if given, then `step` returns True.
    - `set_lr` (`lr` or `multiplier`): every param group in proportion. With a scheduler,
      its base LRs move too, so the schedule goes on from the new level (`lr` sets group 0's
      base LR; the others keep their ratio to it).
    - `anneal`: keel's decay (`1-sqrt`, `linear`, `cosine`) from the LR of the next step to
      `final_lr` over `steps` steps, taking over from the scheduler; its `data_mix` goes to
      `on_data_mix`, its `seq_len`/`rope_theta` to `on_seq_len(seq_len, rope_theta)`.
    - `set_grad_clip`: the clip of `ctl.clip_grad_norm_`.
    - `checkpoint` → `on_checkpoint(step)` (may return the path, shown in the command log);
      `rewind` → `on_rewind(step, skip_batches)`, where `step` is the checkpoint to load
      (the one named, or the newest one `on_checkpoint` made or `add_checkpoint` was told
      of, before `before_step` when given); after it the loop goes on from `step + 1`, and
      those steps go to a new branch. `set_data_mix` → `on_data_mix(weights)`.
      A command whose callback was not given is rejected, saying so.

    Under `torch.distributed` every rank makes a Control at the same point and calls `step`
    at every step: rank 0 takes the commands, and every rank applies the same ones at the
    same step (they travel over a gloo group); rank 0 alone reports. Per-rank step time
    (and throughput, with `tokens=`) is logged as `rank_step_time_s` (`rank_tokens_per_s`),
    one value per rank.
    """

    def __init__(
        self,
        run: Run | None,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        max_grad_norm: float | None = None,
        on_checkpoint: Callable[[int], Any] | None = None,
        on_rewind: Callable[[int, int], Any] | None = None,
        on_data_mix: Callable[[dict[str, float]], Any] | None = None,
        on_seq_len: Callable[[int | None, float | None], Any] | None = None,
        on_grad_clip: Callable[[float], Any] | None = None,
        poll_wait: float = 20.0,
        log_lr: bool = True,
        commit: bool = True,
    ):
        import torch.distributed as dist

        # Wrappers (accelerate's AcceleratedOptimizer) share the param groups of the optimizer
        # inside; the step hooks go on that one.
        optimizer = getattr(optimizer, "optimizer", optimizer)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.max_grad_norm = max_grad_norm
        self.on_checkpoint = on_checkpoint
        self.on_rewind = on_rewind
        self.on_data_mix = on_data_mix
        self.on_seq_len = on_seq_len
        self.on_grad_clip = on_grad_clip
        # False: the step's row stays open after `step` for values logged later at that step.
        self.commit = commit
        self.poll_wait = poll_wait
        self.log_lr = log_lr
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self._group = None
        if self.distributed:
            # Commands travel as CPU tensors on a gloo group, off the accelerator's streams.
            self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        self.run = _default_run(run) if self.rank == 0 else run
        if self.rank == 0 and self.distributed:
            self.run.set_ranks(self.world)
        self.paused = False
        self.stopping = False
        self.checkpoints: list[int] = []
        self._anneal: dict | None = None
        self._clips = 0
        self._next = 0  # the step the optimizer trains next
        self._lr_used: float | None = None
        self._last_t = time.perf_counter()
        self._inbox: list[dict] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._hook = optimizer.register_step_pre_hook(self._pre_step)
        if self.rank == 0:
            self._poller = threading.Thread(target=self._poll, name="keel-commands", daemon=True)
            self._poller.start()

    # ---- the loop's side ----

    def clip_grad_norm_(self, parameters: Iterable[torch.Tensor] | None = None) -> torch.Tensor:
        """Clips to `max_grad_norm` (settable by `set_grad_clip`); returns the norm before.

        With a `watch` on the run, its per-block norms are taken here, before clipping.
        """
        self._clips += 1
        watch = next((t for t in getattr(self.run, "_taps", []) if isinstance(t, Watch)), None) if self.run else None
        if watch is not None:
            return watch.measure_grads(self.max_grad_norm)
        params = list(parameters) if parameters is not None else [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.max_grad_norm is None:
            grads = [p.grad for p in params if p.grad is not None]
            norms = torch._foreach_norm(grads) if grads else []
            return torch.stack([n.float() for n in norms]).square().sum().sqrt() if norms else torch.zeros(())
        return clip_grad_norm_(params, self.max_grad_norm)

    def add_checkpoint(self, step: int) -> None:
        """Tells Control of a checkpoint the loop wrote itself, for `rewind` without `to_step`."""
        if step not in self.checkpoints:
            self.checkpoints.append(step)
            self.checkpoints.sort()

    def step(self, step: int, tokens: int | None = None, step_time: float | None = None) -> bool:
        """The boundary after step `step`. True when the loop must stop.

        `tokens`: the tokens this rank trained on in the step (for `tokens_per_s`).
        `step_time`: this rank's own measure of its step, in seconds; by default the wall
        time since the last boundary, without time spent paused. Under DDP the gradient
        all-reduce makes every rank's wall time equal, so a straggler shows in
        `rank_step_time_s` only with a measure that stops before the all-reduce (the time
        up to `backward`, say).
        """
        now = time.perf_counter()
        wall = now - self._last_t
        if step_time is None:
            step_time = wall
        self._next = step + 1
        self._report_step(step, step_time, wall, tokens)
        for cmd in self._exchange(block=False):
            self._apply(cmd, step)
        while self.paused and not self.stopping:
            for cmd in self._exchange(block=True):
                self._apply(cmd, step)
        self._last_t = time.perf_counter()
        return self.stopping

    def state_dict(self) -> dict:
        """What a checkpoint should keep of Control (an anneal under way, the clip)."""
        return {"anneal": dict(self._anneal) if self._anneal else None, "max_grad_norm": self.max_grad_norm, "checkpoints": list(self.checkpoints)}

    def load_state_dict(self, state: dict) -> None:
        self._anneal = state.get("anneal")
        self.max_grad_norm = state.get("max_grad_norm", self.max_grad_norm)
        self.checkpoints = sorted(set(self.checkpoints) | set(state.get("checkpoints", [])))

    def close(self) -> None:
        """Ends the command poll; under torch.distributed, waits for every rank to get here,
        so that no rank tears its process group down while another still uses it."""
        self._closed = True
        self._hook.remove()
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=self._group)

    # ---- LR ----

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        a = self._anneal
        if a is not None:
            lr = self._next_lr()
            for g, r in zip(self.optimizer.param_groups, a["ratios"]):
                _set_lr(g, lr * r)
        self._lr_used = _get_lr(self.optimizer.param_groups[0])

    def _next_lr(self) -> float:
        """Group 0's LR at the next optimizer step: the anneal's, or the group's own."""
        a = self._anneal
        if a is not None:
            progress = (self._next - a["start"]) / a["steps"]
            return a["final_lr"] + (a["from_lr"] - a["final_lr"]) * decay_factor(a["shape"], progress)
        return _get_lr(self.optimizer.param_groups[0])

    def _schedulers(self) -> list:
        s = self.scheduler
        if s is None:
            return []
        items = s if isinstance(s, (list, tuple)) else getattr(s, "schedulers", None) or [s]
        return [getattr(x, "scheduler", x) for x in items]

    def _scale_lr(self, k: float) -> None:
        for sched in self._schedulers():
            if hasattr(sched, "base_lrs"):
                sched.base_lrs = [b * k for b in sched.base_lrs]
            if hasattr(sched, "_last_lr"):
                sched._last_lr = [x * k for x in sched._last_lr]
        for g in self.optimizer.param_groups:
            _set_lr(g, _get_lr(g) * k)
            if "initial_lr" in g:
                g["initial_lr"] = g["initial_lr"] * k
        if self._anneal is not None:
            self._anneal["from_lr"] *= k
            self._anneal["final_lr"] *= k

    # ---- commands ----

    def _apply(self, cmd: dict, step: int) -> None:
        body = cmd["command"]
        kind = body["kind"]
        handler = getattr(self, f"_do_{kind}", None)
        if handler is None:
            self._outcome(cmd, "rejected", step + 1, f"this loop does not know the command `{kind}`")
            return
        try:
            message = handler(body, step)
        except _Rejected as e:
            self._outcome(cmd, "rejected", step + 1, str(e))
        except Exception as e:  # a callback that failed: the run goes on
            self._outcome(cmd, "rejected", step + 1, f"{type(e).__name__}: {e}")
        else:
            self._outcome(cmd, "applied", step + 1, message)

    def _callback(self, name: str, kind: str) -> Callable:
        cb = getattr(self, name)
        if cb is None:
            raise _Rejected(f"this run cannot {kind}: Control was made without `{name}`")
        return cb

    def _do_pause(self, body: dict, step: int) -> str | None:
        if not self.paused:
            self.paused = True
            self._status("paused", f"paused at step {step + 1}")
        return None

    def _do_resume(self, body: dict, step: int) -> str | None:
        if self.paused:
            self.paused = False
            self._status("running", f"resumed at step {step + 1}")
        return None

    def _do_stop(self, body: dict, step: int) -> str | None:
        self.stopping = True
        if self.on_checkpoint is None:
            return "stopped without a checkpoint (Control was made without `on_checkpoint`)"
        path = self.on_checkpoint(step)
        self.add_checkpoint(step)
        return f"checkpoint {path}" if path else None

    def _do_checkpoint(self, body: dict, step: int) -> str | None:
        path = self._callback("on_checkpoint", "write a checkpoint")(step)
        self.add_checkpoint(step)
        return f"checkpoint {path}" if path else None

    def _do_set_lr(self, body: dict, step: int) -> str | None:
        if body.get("multiplier") is not None:
            k = float(body["multiplier"])
        else:
            scheds = [s for s in self._schedulers() if hasattr(s, "base_lrs")]
            base = scheds[0].base_lrs[0] if scheds and self._anneal is None else self._next_lr()
            if not base > 0:
                raise _Rejected(f"the LR is {base}, so it cannot be scaled to {body['lr']}")
            k = float(body["lr"]) / base
        self._scale_lr(k)
        return f"lr {self._next_lr():.6g}"

    def _do_anneal(self, body: dict, step: int) -> str | None:
        if body.get("seq_len") is not None or body.get("rope_theta") is not None:
            self._callback("on_seq_len", "change its sequence length or RoPE θ")
        if body.get("data_mix") is not None:
            self._callback("on_data_mix", "switch its data mix")
        now = self._next_lr()
        final = float(body["final_lr"])
        if final > now:
            raise _Rejected(f"final_lr {final} is above the current LR {now}: an anneal only lowers the LR (use set_lr to raise it)")
        lr0 = _get_lr(self.optimizer.param_groups[0])
        ratios = [(_get_lr(g) / lr0) if lr0 > 0 else 1.0 for g in self.optimizer.param_groups]
        if body.get("data_mix") is not None:
            self.on_data_mix(dict(body["data_mix"]))
        if body.get("seq_len") is not None or body.get("rope_theta") is not None:
            self.on_seq_len(body.get("seq_len"), body.get("rope_theta"))
        self._anneal = {"start": step + 1, "steps": max(int(body["steps"]), 1), "shape": body.get("shape", "1-sqrt"), "final_lr": final, "from_lr": now, "ratios": ratios}
        return f"{body.get('shape', '1-sqrt')} decay from {now:.6g} to {final:.6g} over {body['steps']} steps"

    def _do_set_data_mix(self, body: dict, step: int) -> str | None:
        self._callback("on_data_mix", "switch its data mix")(dict(body["weights"]))
        return None

    def _do_set_grad_clip(self, body: dict, step: int) -> str | None:
        if self.on_grad_clip is not None:
            self.on_grad_clip(float(body["max_norm"]))
        elif self._clips == 0:
            raise _Rejected("this loop does not clip with ctl.clip_grad_norm_, so its clip cannot be set")
        self.max_grad_norm = float(body["max_norm"])
        return None

    def _do_rewind(self, body: dict, step: int) -> str | None:
        cb = self._callback("on_rewind", "rewind")
        to = body.get("to_step")
        if to is None:
            before = body.get("before_step")
            known = [s for s in self.checkpoints if before is None or s < before]
            if not known:
                where = f" before step {before}" if before is not None else ""
                raise _Rejected(f"no checkpoint is known{where} (made by on_checkpoint or told with add_checkpoint)")
            to = known[-1]
        skip = int(body.get("skip_batches", 0))
        result = cb(int(to), skip)
        if result is False:
            raise _Rejected(f"on_rewind could not load the checkpoint at step {to}")
        self.checkpoints = [s for s in self.checkpoints if s <= to]
        self._anneal = self._anneal if self._anneal is None or self._anneal["start"] <= to else None
        if self.run is not None:
            self.run._rewound(int(to))
        self._next = int(to) + 1
        return f"rewound to step {to}, skipping {skip} batch(es)"

    # ---- rank 0's side: the server ----

    def _report_step(self, step: int, step_time: float, wall: float, tokens: int | None) -> None:
        times = [step_time]
        toks = [float(tokens) / wall if tokens and wall > 0 else 0.0]
        if self.distributed:
            import torch.distributed as dist

            mine = torch.tensor([step_time, toks[0]], dtype=torch.float64)
            every = [torch.zeros(2, dtype=torch.float64) for _ in range(self.world)]
            dist.all_gather(every, mine, group=self._group)
            times = [float(t[0]) for t in every]
            toks = [float(t[1]) for t in every]
        if self.rank != 0 or self.run is None:
            return
        data: dict[str, Any] = {"step_time_s": wall}
        if self.log_lr and self._lr_used is not None:
            data["lr"] = self._lr_used
        if tokens:
            data["tokens_per_s"] = toks[0]
        if self.distributed:
            data["rank_step_time_s"] = times
            if tokens:
                data["rank_tokens_per_s"] = toks
        self.run.log(data, step=step, commit=self.commit)
        if not self.commit:
            self.run.collect_taps()

    def _exchange(self, block: bool) -> list[dict]:
        """The commands every rank applies at this boundary (taken on rank 0)."""
        cmds: list[dict] = []
        if self.rank == 0:
            if block and not self._inbox:
                self._wake.wait(0.5)
            with self._lock:
                cmds, self._inbox = self._inbox, []
                self._wake.clear()
        if self.distributed:
            import torch.distributed as dist

            n = torch.tensor([len(cmds)], dtype=torch.int64)
            dist.broadcast(n, 0, group=self._group)
            if int(n) > 0:
                box = [cmds if self.rank == 0 else None]
                dist.broadcast_object_list(box, 0, group=self._group)
                cmds = box[0]
        return cmds

    def _outcome(self, cmd: dict, status: str, step: int, message: str | None) -> None:
        if self.rank != 0 or self.run is None:
            return
        body: dict[str, Any] = {"status": status, "step": step}
        if message:
            body["message"] = message[:1000]
        self.run._call("POST", f"/api/v1/runs/{{run}}/commands/{cmd['id']}/outcome", body)

    def _status(self, status: str, message: str) -> None:
        if self.rank == 0 and self.run is not None:
            self.run.commit()
            self.run._call("POST", "/api/v1/runs/{run}/status", {"status": status, "message": message})

    def _poll(self) -> None:
        after = 0
        seen: set[int] = set()
        backoff = 0.5
        while not self._closed and not self.run._finished:
            run_id = self.run.wait_created(1.0)
            if run_id is None:
                continue
            try:
                answer = self.run._client.call(
                    "GET", f"/api/v1/runs/{run_id}/commands/pending?after={after}&wait_ms={int(self.poll_wait * 1000)}", timeout=self.poll_wait + 10
                )
            except Unreachable:
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            except Refused as e:
                warnings.warn(f"keel: the command poll was refused ({e.message}); commands are off for this run")
                return
            backoff = 0.5
            fresh = [c for c in answer if c["id"] not in seen]
            for c in fresh:
                seen.add(c["id"])
                after = max(after, c["id"])
            if fresh:
                with self._lock:
                    self._inbox.extend(fresh)
                    self._wake.set()


def _get_lr(group: dict) -> float:
    lr = group["lr"]
    return float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)


def _set_lr(group: dict, lr: float) -> None:
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


# ---- data mixes ----


class MixtureSampler:
    """Draws each row's source by weight; `set_weights` changes the mix live.

        mix = keel.torch.MixtureSampler({"web": 0.7, "code": 0.3}, seed=0)
        ctl = keel.torch.Control(run, opt, on_data_mix=mix.set_weights)
        sources = mix.draw(batch_size)          # ["web", "code", "web", ...]
        ... build the batch from those sources ...
        run.log(loss_by_source(per_row_loss, sources), step=step)

    Unknown source names in `set_weights` raise (so the command is rejected with the reason).
    """

    def __init__(self, weights: dict[str, float], seed: int = 0):
        self.sources = list(weights)
        self._rng = random.Random(seed)
        self.weights: dict[str, float] = {}
        self.set_weights(weights, _initial=True)

    def set_weights(self, weights: dict[str, float], _initial: bool = False) -> None:
        unknown = [s for s in weights if s not in self.sources]
        if unknown and not _initial:
            raise ValueError(f"unknown data source(s) {', '.join(map(repr, unknown))}; this run's sources are {', '.join(self.sources)}")
        bad = [s for s, w in weights.items() if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0)]
        if bad or not any(w > 0 for w in weights.values()):
            raise ValueError("weights must be finite, ≥ 0, and not all 0")
        # Sources left out of a new mix get weight 0.
        self.weights = {s: float(weights.get(s, 0.0)) for s in self.sources}

    def draw(self, n: int) -> list[str]:
        names = list(self.weights)
        return self._rng.choices(names, weights=[self.weights[s] for s in names], k=n)

    def __iter__(self) -> Iterator[str]:
        while True:
            yield self.draw(1)[0]


def loss_by_source(per_row: torch.Tensor, sources: Sequence[str], prefix: str = "loss/") -> dict[str, torch.Tensor]:
    """`{"loss/<source>": mean loss of that source's rows}`, as tensors (no host sync)."""
    names = list(dict.fromkeys(sources))
    at = {s: j for j, s in enumerate(names)}
    index = _to_device([at[s] for s in sources], per_row.device)
    rows = per_row.detach().reshape(len(sources), -1).mean(1).float()
    sums = torch.zeros(len(names), device=per_row.device).index_add_(0, index, rows)
    # Counts by index_add too: torch.bincount on a GPU reads its input's maximum back.
    counts = torch.zeros(len(names), device=per_row.device).index_add_(0, index, torch.ones_like(rows))
    means = sums / counts
    return {f"{prefix}{s}": means[j] for j, s in enumerate(names)}


def _to_device(values: list[int], device: torch.device) -> torch.Tensor:
    """A small index tensor on `device` without waiting for it: a copy from pinned memory is
    queued on the stream, where one from ordinary memory would block the host until it lands."""
    if device.type == "cpu":
        return torch.tensor(values)
    return torch.tensor(values, pin_memory=True).to(device, non_blocking=True)
