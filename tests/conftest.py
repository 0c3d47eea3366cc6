"""Test setup shared by every test file.

Triton reads TRITON_INTERPRET when `@triton.jit` decorates a kernel, i.e. when `bert_kernels` is
first imported, so it is set here, before any test module imports `bert_kernels`, and only when
there is no GPU: on a GPU the kernels run compiled.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")           # nothing is downloaded during tests
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# CI (the CI variable set): the property-based tests draw the same examples on every run, so a red
# build is reproducible; on a developer's machine they explore new ones each time.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(min(2, torch.get_num_threads()))
# the CLIs choose their thread count from the machine's load unless told (cli.set_threads); a test that
# compares two runs bit for bit needs both on the same count, in this process and in the ones it starts
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _same_threads_for_every_test():
    """A test that runs train.main with --threads N sets torch's thread count for the whole process: each
    test starts on the count set above, so none computes (and rounds) differently for what ran before it."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
