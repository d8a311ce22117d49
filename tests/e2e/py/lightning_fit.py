"""Lightning with keel's logger and command callback; it trains until keel stops it."""

import sys

import lightning.pytorch as pl
import torch
from torch import nn

import keel.torch
from keel.integrations.lightning import KeelControl, KeelLogger

mix = keel.torch.MixtureSampler({"web": 0.5, "code": 0.5})


class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.save_hyperparameters({"width": 16, "lr": 0.01})
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(3))
        self.out = nn.Linear(16, 1)

    def training_step(self, batch, i):
        x = batch[0]
        for b in self.blocks:
            x = b(x)
        loss = self.out(x).square().mean()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.01)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)}


torch.manual_seed(0)
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(100_000, 16)), batch_size=32)
trainer = pl.Trainer(
    max_steps=100_000, logger=KeelLogger(name="lightning"), callbacks=[KeelControl(on_data_mix=mix.set_weights)], log_every_n_steps=1,
    enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", default_root_dir=sys.argv[1],
    enable_checkpointing=False,
)
trainer.fit(Module(), data)
print(f"trained {trainer.global_step} steps", flush=True)
