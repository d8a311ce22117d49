"""keel for transformers' Trainer: logs, per-layer taps and operator commands.

    from keel.integrations.hf import KeelCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[KeelCallback()])
    trainer.train()

The run is created at `on_train_begin` (on the main process) with the TrainingArguments as
its config; `KEEL_SERVER` and `KEEL_TOKEN` say where. Steps are the Trainer's
`global_step` (1 after the first update). Commands apply at `on_step_end`: pause, resume,
set_lr and anneal through the optimizer and scheduler, set_grad_clip through
`args.max_grad_norm`, checkpoint and stop through `TrainerControl` (the Trainer saves at
that step). `set_data_mix` needs `on_data_mix`; `rewind` needs `on_rewind` (the Trainer
cannot go back in the middle of `train()` by itself).
"""

from __future__ import annotations

from typing import Any, Callable

from transformers import TrainerCallback

import keel
import keel.torch

# Keys of the Trainer's logs, as keel names them; others keep their name.
RENAMES = {"learning_rate": None, "eval_loss": "val/loss"}


class KeelCallback(TrainerCallback):
    def __init__(
        self,
        run: keel.Run | None = None,
        watch: bool = True,
        every: int = 1,
        on_data_mix: Callable[[dict[str, float]], Any] | None = None,
        on_rewind: Callable[[int, int], Any] | None = None,
        **init: Any,
    ):
        self.run = run
        self.watch = watch
        self.every = every
        self.on_data_mix = on_data_mix
        self.on_rewind = on_rewind
        self.init = init
        self.ctl: keel.torch.Control | None = None
        self._control = None
        self._args = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self._args = args
        if state.is_world_process_zero and self.run is None:
            config = {k: v for k, v in args.to_dict().items() if "token" not in k}
            if model is not None and hasattr(model, "config"):
                config["model"] = model.config.to_dict()
            self.init.setdefault("name", args.run_name or None)
            self.run = keel.init(config=config, **self.init)
        if state.is_world_process_zero and self.watch and model is not None:
            keel.torch.watch(model, optimizer, every=self.every, run=self.run)
        self.ctl = keel.torch.Control(
            self.run,
            optimizer,
            lr_scheduler,
            on_checkpoint=self._checkpoint,
            on_rewind=self.on_rewind,
            on_data_mix=self.on_data_mix,
            on_grad_clip=lambda v: setattr(args, "max_grad_norm", v),
            commit=False,  # the Trainer logs a step after its on_step_end
        )

    def _checkpoint(self, step: int) -> str:
        self._control.should_save = True
        return f"{self._args.output_dir}/checkpoint-{step + 1}"

    def on_step_end(self, args, state, control, **kwargs):
        if self.ctl is None:
            return control
        self._control = control
        # keel's `step` is the update just made; the Trainer counts from 1.
        if self.ctl.step(state.global_step - 1):
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.run is None or not state.is_world_process_zero or not logs:
            return
        out = {}
        for key, value in logs.items():
            name = RENAMES.get(key, key)
            if name is None or not isinstance(value, (int, float)):
                continue
            out[name if not name.startswith("eval_") else "val/" + name[5:]] = value
        self.run.log(out, step=state.global_step - 1)

    def on_train_end(self, args, state, control, **kwargs):
        if self.ctl is not None:
            self.ctl.close()
        if self.run is not None and state.is_world_process_zero:
            self.run.finish()
