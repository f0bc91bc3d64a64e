import os

# Hub-aware loaders must never wait on the network in tests (environment.md: ~25 s of retries).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
