import os

import pytest
import torch

# Hub-aware loaders must never wait on the network in tests (environment.md: ~25 s of retries).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Timings keep freed memory by default (duca_common.allocator), which is process-wide and cannot be undone:
# the test process keeps glibc's own behaviour so that no test depends on which one timed something first.
# The tests of the default run in child processes with the variable removed (tests/test_allocator.py).
os.environ.setdefault("DUCA_CPU_ALLOCATOR", "system")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests run tiny models: one intra-op thread avoids fork/join overhead (on a loaded 2-core machine
    two threads were 10-20x slower on tiny tensors). Subprocesses (torchrun tests) choose their own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
