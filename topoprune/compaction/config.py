"""Every default of ``topoprune compact``: where the smaller model goes and the dtypes it may be saved in.

The CLI takes its defaults and choices from here.
"""
from __future__ import annotations

import torch

#: ``--dtype`` names and the dtypes they save the weights in (default: as loaded).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Where ``topoprune compact`` writes the smaller model when no ``--out`` is given.
OUT = "topoprune-compact"
