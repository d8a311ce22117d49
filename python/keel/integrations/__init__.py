"""keel for training frameworks: `keel.integrations.hf` (transformers' Trainer) and
`keel.integrations.lightning` (Lightning)."""
