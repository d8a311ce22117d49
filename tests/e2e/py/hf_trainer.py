"""transformers' Trainer on a tiny randomly initialised GPT-2 (no downloads), with keel's
callback; it trains until keel stops it."""

import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import keel.torch
from keel.integrations.hf import KeelCallback

torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2))


mix = keel.torch.MixtureSampler({"web": 0.5, "code": 0.5})


class Rows(torch.utils.data.Dataset):
    """Each row's source drawn by the live mix: `code` repeats a motif, `web` does not."""

    def __len__(self):
        return 100_000

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        if mix.draw(1)[0] == "code":
            ids = torch.randint(0, 64, (4,), generator=g).repeat(8)
        else:
            ids = torch.randint(0, 64, (32,), generator=g)
        return {"input_ids": ids, "labels": ids}


args = TrainingArguments(
    output_dir=sys.argv[1], max_steps=100_000, per_device_train_batch_size=8, learning_rate=1e-3,
    lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
    max_grad_norm=1.0, disable_tqdm=True, dataloader_num_workers=0,
)
trainer = Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[KeelCallback(name="hf-gpt2", on_data_mix=mix.set_weights)])
out = trainer.train()
print(f"trained {out.global_step} steps", flush=True)
