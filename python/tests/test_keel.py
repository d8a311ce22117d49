"""keel's Python client without a server: records, taps and LR changes checked against
direct computations. (Against a real server: tests/e2e/python.rs.)"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import threading
import unittest
import warnings

import torch
from torch import nn

import keel
import keel.torch
from keel import _wire


def offline_run(tmp: str, **kw) -> keel.Run:
    """A run whose server is not there (port 9 refuses): what it sends stays in `tmp`."""
    return keel.Run(name="offline", server="http://127.0.0.1:9", token="t", dir=tmp, finish_timeout=0.1, **kw)


def finish_quietly(run: keel.Run) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run.finish()


class Records(unittest.TestCase):
    def test_non_finite_values_travel_as_keels_strings(self):
        self.assertEqual([_wire.metric(x) for x in (1.5, math.nan, math.inf, -math.inf)], [1.5, "NaN", "Infinity", "-Infinity"])
        self.assertTrue(math.isnan(_wire.from_metric("NaN")))

    def test_per_layer_keys_fold_into_vectors_and_nested_dicts_flatten(self):
        row = _wire.Row(3, 0, 10.0)
        row.add({"loss": torch.tensor(2.0), "train": {"acc": 0.5}, "layers/1/hidden_var": 2.0, "layers/0/hidden_var": 1.0, "grad_norm": [0.1, 0.2], "tokens": 4096})
        row.pack()
        r = row.resolve(2)
        self.assertEqual(r["step"], 3)
        self.assertEqual(r["tokens"], 4096)
        self.assertEqual(r["scalars"], {"loss": 2.0, "train/acc": 0.5})
        self.assertEqual(r["layers"], {"hidden_var": [1.0, 2.0], "grad_norm": [0.1, 0.2]})

    def test_a_custom_layer_pattern(self):
        import re

        row = _wire.Row(0, 0, 0.0)
        row.add({"blk3.var": 3.0, "blk0.var": 0.0, "blk1.var": 1.0, "blk2.var": 2.0}, re.compile(r"^blk(?P<layer>\d+)\.(?P<stat>.+)$"))
        self.assertEqual(row.resolve(4)["layers"], {"var": [0.0, 1.0, 2.0, 3.0]})

    def test_what_cannot_be_sent_is_left_out_with_a_warning(self):
        row = _wire.Row(0, 0, 0.0)
        row.add({"ok": 1, " padded": 1.0, "text": "hello", "layers/0/partial": 1.0, "short": [1.0]})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _wire._warned.clear()
            r = row.resolve(2)
        self.assertEqual(r["scalars"], {"ok": 1.0})
        self.assertEqual(r["layers"], {})
        self.assertEqual(len(caught), 4, [str(w.message) for w in caught])

    def test_steps_merge_until_a_later_step_and_never_go_back(self):
        with tempfile.TemporaryDirectory() as tmp:
            run = offline_run(tmp, layers=1)
            run.log({"loss": 1.0}, step=5)
            run.log({"lr": 0.1}, step=5)
            self.assertEqual(run._row.scalars, {"loss": 1.0, "lr": 0.1})
            run.log({"loss": 0.5}, step=6)
            self.assertEqual(run._last_step, 5)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _wire._warned.clear()
                run.log({"loss": 9.0}, step=4)
            self.assertIn("below", str(caught[0].message))
            run.log({"loss": 0.25})  # without a step: the next one, committed at once
            self.assertEqual(run._last_step, 7)
            finish_quietly(run)


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8), nn.Tanh()) for _ in range(3))
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        for b in self.layers:
            x = b(x) * 3.0
        return self.head(x)


def direct_hidden(model: Blocks, x: torch.Tensor) -> list[tuple[float, float, float]]:
    out = []
    for b in model.layers:
        x = b(x)
        h = x.double()
        var = h.var(-1, unbiased=False).mean().item()
        rms = h.square().mean().sqrt().item()
        out.append((var, rms, h.abs().max().item()))
        x = x * 3.0
    return out


class Taps(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.run = offline_run(self.tmp.name)

    def tearDown(self):
        finish_quietly(self.run)
        self.tmp.cleanup()

    def test_blocks_are_found_in_common_layouts(self):
        class HF(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = nn.Module()
                self.model.layers = nn.ModuleList([nn.Linear(2, 2)] * 2)

        class GPT2(nn.Module):
            def __init__(self):
                super().__init__()
                self.transformer = nn.Module()
                self.transformer.h = nn.ModuleList([nn.Linear(2, 2)] * 3)

        class Titan(nn.Module):
            def __init__(self):
                super().__init__()
                self.layers = nn.ModuleDict({"0": nn.Linear(2, 2), "1": nn.Linear(2, 2)})

        self.assertEqual(len(keel.torch.find_blocks(HF())), 2)
        self.assertEqual(len(keel.torch.find_blocks(GPT2())), 3)
        self.assertEqual(len(keel.torch.find_blocks(Titan())), 2)
        with self.assertRaisesRegex(ValueError, "blocks="):
            keel.torch.find_blocks(nn.Linear(2, 2))

    def test_every_statistic_matches_a_direct_computation(self):
        model = Blocks().double()
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
        watch = keel.torch.watch(model, opt, run=self.run)
        x = torch.randn(4, 5, 8, dtype=torch.float64)
        with torch.no_grad():
            hidden = direct_hidden(model, x)
        model(x).square().mean().backward()
        # Gradients before clipping, per block and in all.
        block_sq = [sum(p.grad.square().sum().item() for p in b.parameters()) for b in model.layers]
        total = math.sqrt(sum(p.grad.square().sum().item() for p in model.parameters()))
        watch.measure_grads(clip=total / 2)
        clipped = [p.grad.clone() for p in model.parameters()]
        before = [[p.detach().clone() for p in b.parameters() if p.dim() >= 2] for b in model.layers]
        opt.step()
        row = _wire.Row(0, 0, 0.0)
        watch.collect(row)
        row.pack()
        r = row.resolve(3)
        L = r["layers"]
        for i, (var, rms, absmax) in enumerate(hidden):
            self.assertAlmostEqual(L["hidden_var"][i], var, places=6)
            self.assertAlmostEqual(L["hidden_rms"][i], rms, places=6)
            self.assertAlmostEqual(L["act_absmax"][i], absmax, places=6)
        for i, sq in enumerate(block_sq):
            self.assertAlmostEqual(L["grad_norm"][i], math.sqrt(sq), places=6)
        self.assertAlmostEqual(r["scalars"]["grad_norm"], total, places=6)
        self.assertEqual(r["scalars"]["grad_clipped"], 1.0)
        # The optimizer saw the clipped gradients: half the norm.
        self.assertAlmostEqual(math.sqrt(sum(g.square().sum().item() for g in clipped)), total / 2, places=5)
        for i, b in enumerate(model.layers):
            mats = [p.detach() for p in b.parameters() if p.dim() >= 2]
            norm = math.sqrt(sum(m.square().sum().item() for m in mats))
            delta = math.sqrt(sum((m - m0).square().sum().item() for m, m0 in zip(mats, before[i])))
            gains = b[0].weight.detach()
            self.assertAlmostEqual(L["param_norm"][i], norm, places=6)
            self.assertAlmostEqual(L["update_ratio"][i], delta / norm, places=6)
            self.assertAlmostEqual(L["norm_gain"][i], gains.square().mean().sqrt().item(), places=6)
        watch.remove()

    def test_statistics_are_taken_every_k_steps_and_not_from_evaluation(self):
        model = Blocks()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        watch = keel.torch.watch(model, opt, every=2, run=self.run, update_every=2)
        seen = []
        for _ in range(8):
            model(torch.randn(2, 8)).sum().backward()
            opt.step()
            opt.zero_grad()
            with torch.no_grad():
                model(torch.randn(2, 8))  # evaluation: not tapped
            row = _wire.Row(0, 0, 0.0)
            watch.collect(row)
            seen.append(sorted(row.layers))
        full = ["act_absmax", "grad_norm", "hidden_rms", "hidden_var", "norm_gain", "param_norm", "update_ratio"]
        cheap = [s for s in full if s != "update_ratio"]
        # Every 2nd step; the update ratio on every 2nd of those.
        self.assertEqual(seen, [full, [], cheap, [], full, [], cheap, []])
        watch.remove()


class NoHostReads(unittest.TestCase):
    """On a GPU a read of a tensor (`.item()`, `.tolist()`, `float(t)`, ...) waits for every
    kernel queued before it. The training thread makes none of them in keel's code: the
    sender thread reads each step's values, once."""

    READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")

    def test_a_step_with_log_watch_and_control_reads_nothing_on_the_training_thread(self):
        main = threading.get_ident()
        reads: list[str] = []
        originals = {name: getattr(torch.Tensor, name) for name in self.READS}

        def spy(name):
            original = originals[name]

            def read(t, *args, **kwargs):
                caller = sys._getframe(1).f_code.co_filename
                if threading.get_ident() == main and f"{os.sep}keel{os.sep}" in caller:
                    reads.append(f"{name} from {caller}:{sys._getframe(1).f_lineno}")
                return original(t, *args, **kwargs)

            return read

        with tempfile.TemporaryDirectory() as tmp:
            run = offline_run(tmp)
            model = Blocks()
            opt = torch.optim.AdamW(model.parameters(), lr=0.01)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
            keel.torch.watch(model, opt, run=run, update_every=1)
            ctl = keel.torch.Control(run, opt, sched, max_grad_norm=0.5)
            mix = keel.torch.MixtureSampler({"a": 1.0, "b": 1.0})
            for name in self.READS:
                setattr(torch.Tensor, name, spy(name))
            try:
                for step in range(3):
                    sources = mix.draw(4)
                    per_row = model(torch.randn(4, 8)).square().mean(1)
                    loss = per_row.mean()
                    loss.backward()
                    ctl.clip_grad_norm_()
                    opt.step()
                    sched.step()
                    opt.zero_grad()
                    run.log({"loss": loss, **keel.torch.loss_by_source(per_row, sources)}, step=step)
                    ctl.step(step, tokens=32)
            finally:
                for name, original in originals.items():
                    setattr(torch.Tensor, name, original)
            ctl.close()
            finish_quietly(run)
        self.assertEqual(reads, [])


class LearningRates(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.run = offline_run(self.tmp.name, layers=1)
        self.model = nn.Linear(2, 2)
        self.opt = torch.optim.SGD([{"params": [self.model.weight], "lr": 0.1}, {"params": [self.model.bias], "lr": 0.02}])
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / 4))
        self.ctl = keel.torch.Control(self.run, self.opt, self.sched)

    def tearDown(self):
        self.ctl.close()
        finish_quietly(self.run)
        self.tmp.cleanup()

    def step(self):
        self.opt.step()
        self.sched.step()

    def lrs(self):
        return [g["lr"] for g in self.opt.param_groups]

    def test_set_lr_moves_every_group_in_proportion_and_the_schedule_follows(self):
        for _ in range(5):
            self.step()
        self.ctl._do_set_lr({"kind": "set_lr", "lr": 0.05}, 4)
        self.assertEqual(self.lrs(), [0.05, 0.01])
        self.step()
        self.assertEqual(self.lrs(), [0.05, 0.01])
        self.ctl._do_set_lr({"kind": "set_lr", "multiplier": 2.0}, 5)
        self.step()
        self.assertEqual(self.lrs(), [0.1, 0.02])

    def test_anneal_takes_over_from_the_scheduler_with_keels_shapes(self):
        for _ in range(5):
            self.step()
        self.ctl._next = 5
        self.ctl._do_anneal({"kind": "anneal", "steps": 4, "final_lr": 0.02, "shape": "cosine"}, 4)
        got = []
        for s in range(5, 11):
            self.ctl._next = s
            self.opt.step()  # the pre-step hook sets the LR of step s
            got.append(self.lrs())
            self.sched.step()
        want = [0.02 + 0.08 * 0.5 * (1 + math.cos(math.pi * min((s - 5) / 4, 1))) for s in range(5, 11)]
        for (g0, g1), w in zip(got, want):
            self.assertAlmostEqual(g0, w, places=12)
            self.assertAlmostEqual(g1, w * 0.2, places=12)  # group 1 keeps its ratio
        with self.assertRaisesRegex(Exception, "only lowers"):
            self.ctl._do_anneal({"kind": "anneal", "steps": 4, "final_lr": 1.0}, 10)

    def test_decay_shapes_match_keels_trainer(self):
        f = keel.torch.decay_factor
        self.assertEqual([f("1-sqrt", p) for p in (0, 0.25, 1)], [1.0, 0.5, 0.0])
        self.assertEqual([f("linear", p) for p in (0, 0.5, 2)], [1.0, 0.5, 0.0])
        self.assertAlmostEqual(f("cosine", 0.5), 0.5)


class Mixtures(unittest.TestCase):
    def test_weights_change_live_and_unknown_sources_are_refused(self):
        mix = keel.torch.MixtureSampler({"web": 1.0, "code": 1.0}, seed=1)
        self.assertEqual(set(mix.draw(200)), {"web", "code"})
        mix.set_weights({"code": 1.0})
        self.assertEqual(set(mix.draw(200)), {"code"})
        with self.assertRaisesRegex(ValueError, "books"):
            mix.set_weights({"books": 1.0})
        with self.assertRaises(ValueError):
            mix.set_weights({"web": math.nan})

    def test_loss_by_source(self):
        per_row = torch.tensor([1.0, 2.0, 4.0])
        out = keel.torch.loss_by_source(per_row, ["a", "b", "a"])
        self.assertEqual({k: v.item() for k, v in out.items()}, {"loss/a": 2.5, "loss/b": 2.0})


if __name__ == "__main__":
    unittest.main()
