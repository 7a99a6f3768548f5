"""Fine-tuning: `finetune(config, workdir)` runs a config (see configs/ and research.train.config) into a
resumable orbax workdir that `research.load(WORKDIR)` reads like any other weights."""
from __future__ import annotations

from research.train.config import defaults, load as load_config
from research.train.loop import finetune

__all__ = ["defaults", "finetune", "load_config"]
