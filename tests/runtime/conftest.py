"""Runtime tests share two cores: one intra-op thread keeps them quick and reproducible."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
