"""CLIP score (Hessel et al. 2021) with transformers' CLIPModel / CLIPProcessor.

Two definitions (``definition=``):

* ``"torchmetrics"`` (default): torchmetrics' ``CLIPScore``, the tool behind the reference's numbers
  (torchmetrics 1.9, ``functional/multimodal/clip_score.py``). Per pair ``100 * cos(E_img, E_txt)``
  (not clamped), the mean over all pairs, then ``max(mean, 0)``. Prompts are tokenized without
  truncation and the token ids and mask are then cut to the first 77 positions, so a prompt longer
  than CLIP's context loses its end-of-text token; transformers' text pooling then reads the position
  it finds for that token in the cut ids (the first end-of-text id, or the largest id for the legacy
  OpenAI configs), as it does inside torchmetrics.
* ``"clamped_pairs"``: the earlier definition of this project: the tokenizer truncates to 77 tokens
  keeping the end-of-text token, each pair is clamped, ``100 * max(cos, 0)``, and the clamped scores
  are averaged. It differs from torchmetrics on prompts longer than 77 tokens (a different pooled
  token: up to tens of points per pair) and on any pair with a negative cosine.

The embeddings are computed explicitly (pooled vision / text outputs through the projection layers),
which is what ``CLIPModel.get_image_features`` / ``get_text_features`` return in transformers 4;
transformers 5 changed those methods' return type, which breaks torchmetrics' ``CLIPScore`` itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .errors import InputError, MissingWeightsError
from .weights import network_reachable

# ViT-L/14, the CLIP the paper's COCO protocol uses (also torchmetrics' default).
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
HF_HUB_URL = "https://huggingface.co"

# torchmetrics CLIPScore: score = max(100 * mean(cos), 0).
CLIP_SCORE_SCALE = 100.0

ClipDefinition = Literal["torchmetrics", "clamped_pairs"]
CLIP_DEFINITIONS: tuple[str, ...] = ("torchmetrics", "clamped_pairs")
DEFAULT_CLIP_DEFINITION: ClipDefinition = "torchmetrics"


def check_definition(definition: str) -> None:
    if definition not in CLIP_DEFINITIONS:
        raise InputError(f"CLIP score definition {definition!r} is not one of {CLIP_DEFINITIONS}: 'torchmetrics' "
                         f"is torchmetrics' CLIPScore (the reference's tool), 'clamped_pairs' the mean of per-pair "
                         f"clamped scores with end-of-text-preserving truncation")

# Files a local CLIP folder must hold (written by save_pretrained of the model and the processor).
REQUIRED_CLIP_FILES = ("config.json",)


def resolve_clip_model(spec: str | Path = DEFAULT_CLIP_MODEL) -> str:
    """A local folder for ``spec`` (folder path or hub id); raises MissingWeightsError when neither
    the folder, the hub cache nor the network has it. Checked before any image is read."""
    path = Path(spec).expanduser()
    if path.exists():
        missing = [name for name in REQUIRED_CLIP_FILES if not (path / name).is_file()]
        if missing:
            raise MissingWeightsError(
                f"CLIP folder {path} lacks {missing}; save a model there with CLIPModel.save_pretrained and "
                f"CLIPProcessor.save_pretrained, or pass a hub id such as {DEFAULT_CLIP_MODEL}."
            )
        return str(path)
    spec = str(spec)
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1)
    if looks_like_path:
        raise MissingWeightsError(f"CLIP folder {path} does not exist; pass --clip-model with a folder or a hub id.")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(spec, local_files_only=True)
    except Exception:
        pass
    how = (
        f"on a machine with internet access run `hf download {spec} --local-dir clip-vit-l14` "
        f"(or `python -c \"from transformers import CLIPModel, CLIPProcessor; "
        f"CLIPModel.from_pretrained('{spec}').save_pretrained('clip-vit-l14'); "
        f"CLIPProcessor.from_pretrained('{spec}').save_pretrained('clip-vit-l14')\"`), copy the folder here and "
        f"pass --clip-model clip-vit-l14"
    )
    if not network_reachable(HF_HUB_URL):         # False too when the machine is declared offline
        raise MissingWeightsError(f"CLIP model '{spec}' is not in the Hugging Face cache "
                                  f"and the hub is unreachable; {how}.")
    try:
        return snapshot_download(spec, allow_patterns=["*.json", "*.txt", "*.safetensors"])
    except Exception as exc:
        raise MissingWeightsError(f"CLIP model '{spec}' could not be downloaded ({exc}); {how}.") from exc


class ClipScorer:
    """Per-pair CLIP scores ``100 * cos`` of PIL images or uint8 HWC arrays against prompts; ``mean``
    turns a set of them into the CLIP score of ``definition``."""

    def __init__(self, model_dir: str | Path, device: str = "cpu",
                 definition: ClipDefinition = DEFAULT_CLIP_DEFINITION):
        from transformers import CLIPModel, CLIPProcessor

        check_definition(definition)
        self.definition = definition
        self.device = torch.device(device)
        self.model_dir = str(model_dir)
        self.model = CLIPModel.from_pretrained(self.model_dir).to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(self.model_dir)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def image_embeddings(self, images: Sequence) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled)

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and mask as the definition's tool makes them (see the module docstring)."""
        if self.definition == "torchmetrics":
            tokens = self.processor(text=list(prompts), return_tensors="pt", padding=True)
            return {k: tokens[k][..., : self.max_length] for k in ("input_ids", "attention_mask")}
        tokens = self.processor(text=list(prompts), return_tensors="pt", padding=True, truncation=True,
                                max_length=self.max_length)
        return {k: tokens[k] for k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenize(prompts)
        pooled = self.model.text_model(
            input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
        ).pooler_output
        return self.model.text_projection(pooled)

    def __call__(self, images: Sequence, prompts: Sequence[str]) -> np.ndarray:
        if len(images) != len(prompts):
            raise InputError(f"{len(images)} images but {len(prompts)} prompts")
        return clip_score_from_embeddings(self.image_embeddings(images), self.text_embeddings(prompts))

    def mean(self, per_pair: np.ndarray) -> float:
        return mean_clip_score(per_pair, self.definition)


def clip_score_from_embeddings(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> np.ndarray:
    """``100 * cos`` per row pair, not clamped (torchmetrics: unit-normalise each embedding, then the dot)."""
    a = image_embeds.float() / image_embeds.float().norm(p=2, dim=-1, keepdim=True)
    b = text_embeds.float() / text_embeds.float().norm(p=2, dim=-1, keepdim=True)
    return (CLIP_SCORE_SCALE * (a * b).sum(dim=-1)).cpu().numpy()


def mean_clip_score(per_pair: np.ndarray, definition: ClipDefinition = DEFAULT_CLIP_DEFINITION) -> float:
    """The CLIP score of a set of pairs: ``max(mean, 0)`` (torchmetrics) or ``mean(max(pair, 0))``."""
    check_definition(definition)
    scores = np.asarray(per_pair, dtype=np.float64)
    if scores.size == 0:
        raise InputError("no (image, prompt) pairs to score")
    if definition == "torchmetrics":
        return max(float(scores.mean()), 0.0)
    return float(np.maximum(scores, 0.0).mean())
