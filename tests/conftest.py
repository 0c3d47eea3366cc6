"""Test setup shared by every test file.

Triton reads TRITON_INTERPRET when `@triton.jit` decorates a kernel, i.e. when `kernels` is
first imported, so it is set here, before any test module imports `kernels`, and only when
there is no GPU: on a GPU the kernels run compiled.
"""
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")           # nothing is downloaded during tests
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(min(2, torch.get_num_threads()))
