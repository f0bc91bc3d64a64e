import os

import pytest
import torch

# Hub-aware loaders must never wait on the network in tests (environment.md: ~25 s of retries).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests run tiny models: one intra-op thread avoids fork/join overhead (on a loaded 2-core machine
    two threads were 10-20x slower on tiny tensors). Subprocesses (torchrun tests) choose their own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
