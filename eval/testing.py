"""Tiny random stand-ins for the real weights, for tests and offline smoke runs.

Nothing here is meaningful as a metric; it exercises the full pipelines without downloads:

* :func:`make_random_inception_weights`: a torch-fidelity-compatible Inception-v3 state dict;
  the convolutions are Kaiming-initialised (with default init the features of a random Inception
  collapse to nearly the same vector for every image and every FID is ~0).
* :func:`make_random_lpips_weights`: random backbone and linear-head files in the layouts of
  torchvision and of the LPIPS release.
* :func:`make_tiny_clip`: a 1-layer CLIP with a byte-level BPE tokenizer built from a small vocab.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# Number of ImageNet-style classes of the TF Inception graph (1000 classes + 8 unused).
INCEPTION_NUM_CLASSES = 1008

# Context length of CLIP's text encoder.
CLIP_CONTEXT_LENGTH = 77


def make_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """Save a random Inception-v3 state dict loadable by torch-fidelity's extractor."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.inception_v3(
        weights=None, aux_logits=False, init_weights=False, num_classes=INCEPTION_NUM_CLASSES
    )
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = Path(path)
    torch.save(model.state_dict(), path)
    return path


def make_random_lpips_weights(folder: str | Path, net: str = "alex", seed: int = 0) -> tuple[Path, Path]:
    """Random (backbone, heads) files for :class:`duca_eval.lpips.LPIPS`; returns their paths."""
    import torchvision

    from .lpips import BACKBONES, head_key

    torch.manual_seed(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backbone = getattr(torchvision.models, BACKBONES[net].torchvision_name)(weights=None)
    backbone_path = folder / f"{net}-random-backbone.pth"
    torch.save(backbone.state_dict(), backbone_path)
    heads = {head_key(i): torch.rand(1, c, 1, 1) for i, c in enumerate(BACKBONES[net].channels)}
    heads_path = folder / f"{net}-random-heads.pth"
    torch.save(heads, heads_path)
    return backbone_path, heads_path


def _tiny_bpe_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    # Printable ASCII maps to itself in CLIP's byte-to-unicode table; each character exists alone
    # and word-final ("</w>"), plus a few merges so that BPE actually runs.
    chars = [chr(code) for code in range(ord("!"), ord("~") + 1)]
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab[token] = len(vocab)
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return vocab, merges


def make_tiny_clip(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Save a tiny random CLIPModel + CLIPProcessor to ``folder`` (loadable with from_pretrained)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(seed)
    vocab, merges = _tiny_bpe_vocab()
    # transformers 5: the tokenizer takes vocab= / merges= (vocab_file= would be silently ignored).
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_CONTEXT_LENGTH)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=CLIP_CONTEXT_LENGTH, bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=image_size, patch_size=8,
        ),
        projection_dim=16,
    )
    folder = Path(folder)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def write_random_images(folder: str | Path, count: int, size: int = 64, seed: int = 0, names=None) -> list[Path]:
    """Write ``count`` random RGB PNGs named ``{index:06d}.png`` (or ``names``)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        name = names[index] if names is not None else f"{index:06d}.png"
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        path = folder / name
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths
