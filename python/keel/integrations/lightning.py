"""keel for Lightning: a logger, and a callback that applies operator commands.

    from keel.integrations.lightning import KeelLogger, KeelControl
    trainer = L.Trainer(logger=KeelLogger(name="gpt"), callbacks=[KeelControl()])
    trainer.fit(module, data)

`KeelLogger` sends what `self.log` logs (and the hyperparameters as the run's config);
`KeelControl` taps the module's blocks and applies commands after each optimizer step:
pause, resume, set_lr and anneal through the optimizer and its schedulers, checkpoint and
stop through `trainer.save_checkpoint` and `trainer.should_stop`. `set_data_mix` needs
`on_data_mix`, `rewind` needs `on_rewind`. Steps are the trainer's optimizer steps, from 0.
"""

from __future__ import annotations

import os
from argparse import Namespace
from typing import Any, Callable

import lightning.pytorch as pl
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

import keel
import keel.torch


class KeelLogger(Logger):
    def __init__(self, name: str | None = None, group: str | None = None, **init: Any):
        super().__init__()
        self._name = name
        self._init = dict(init, name=name, group=group)
        self._run: keel.Run | None = None
        self._config: dict = {}

    @property
    def name(self) -> str:
        return self._name or "keel"

    @property
    def version(self) -> int | None:
        return self._run.id if self._run is not None else None

    @property
    @rank_zero_experiment
    def experiment(self) -> keel.Run:
        """The keel run (made on first use, on rank 0)."""
        if self._run is None:
            self._run = keel.init(config=self._config or None, **self._init)
        return self._run

    @rank_zero_only
    def log_hyperparams(self, params: dict | Namespace, *args: Any, **kwargs: Any) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        self._config.update(params)
        if self._run is not None:
            self._run.config = keel._config_dict(self._config)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.experiment.log(dict(metrics), step=step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._run is not None:
            self._run.finish("finished" if status == "success" else "failed")


class KeelControl(pl.Callback):
    """Applies keel's commands at each optimizer step's end (every rank, in step)."""

    def __init__(
        self,
        watch: bool = True,
        every: int = 1,
        checkpoints: str | os.PathLike | None = None,
        on_data_mix: Callable[[dict[str, float]], Any] | None = None,
        on_rewind: Callable[[int, int], Any] | None = None,
    ):
        self.watch = watch
        self.every = every
        self.checkpoints = checkpoints
        self.on_data_mix = on_data_mix
        self.on_rewind = on_rewind
        self.ctl: keel.torch.Control | None = None
        self._trainer: pl.Trainer | None = None

    def _run(self, trainer: pl.Trainer) -> keel.Run | None:
        for logger in trainer.loggers:
            if isinstance(logger, KeelLogger):
                return logger.experiment if trainer.is_global_zero else None
        return keel.run

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        run = self._run(trainer)
        optimizer = trainer.optimizers[0]
        if run is not None and self.watch:
            try:
                keel.torch.watch(pl_module, optimizer, every=self.every, run=run)
            except ValueError as e:  # no blocks found: commands still work
                keel._wire.warn_once("blocks", f"keel: {e}")
        self.ctl = keel.torch.Control(
            run,
            optimizer,
            [c.scheduler for c in trainer.lr_scheduler_configs],
            on_checkpoint=self._checkpoint,
            on_data_mix=self.on_data_mix,
            on_rewind=self.on_rewind,
            on_grad_clip=lambda v: setattr(trainer, "gradient_clip_val", v),
            commit=False,  # Lightning logs a step's metrics after this callback
        )

    def _checkpoint(self, step: int) -> str:
        trainer = self._trainer
        folder = self.checkpoints or os.path.join(trainer.default_root_dir, "checkpoints")
        path = os.path.join(folder, f"keel-step-{step}.ckpt")
        trainer.save_checkpoint(path)
        return path

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ctl is not None and self.ctl.step(trainer.global_step - 1):
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.ctl is not None:
            self.ctl.close()
