"""CLIP score (Hessel et al. 2021, torchmetrics' definition): 100 * max(cos(E_img, E_txt), 0),
averaged over (image, prompt) pairs, with transformers' CLIPModel / CLIPProcessor.

The embeddings are computed explicitly (pooled vision / text outputs through the projection
layers), which is what ``CLIPModel.get_image_features`` / ``get_text_features`` return in
transformers 4; transformers 5 changed those methods' return type, which breaks torchmetrics'
``CLIPScore``. Prompts longer than CLIP's context (77 tokens) are truncated, as torchmetrics does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import InputError, MissingWeightsError
from .weights import network_reachable, offline_by_env

# ViT-L/14, the CLIP the paper's COCO protocol uses (also torchmetrics' default).
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
HF_HUB_URL = "https://huggingface.co"

# torchmetrics CLIPScore: score = 100 * max(cos, 0).
CLIP_SCORE_SCALE = 100.0

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
        f"on a machine with internet access run `huggingface-cli download {spec} --local-dir clip-vit-l14` "
        f"(or `python -c \"from transformers import CLIPModel, CLIPProcessor; "
        f"CLIPModel.from_pretrained('{spec}').save_pretrained('clip-vit-l14'); "
        f"CLIPProcessor.from_pretrained('{spec}').save_pretrained('clip-vit-l14')\"`), copy the folder here and "
        f"pass --clip-model clip-vit-l14"
    )
    if offline_by_env() or not network_reachable(HF_HUB_URL):
        raise MissingWeightsError(f"CLIP model '{spec}' is not in the Hugging Face cache and the hub is unreachable; {how}.")
    try:
        return snapshot_download(spec, allow_patterns=["*.json", "*.txt", "*.safetensors"])
    except Exception as exc:
        raise MissingWeightsError(f"CLIP model '{spec}' could not be downloaded ({exc}); {how}.") from exc


class ClipScorer:
    """Per-pair CLIP scores of PIL images or uint8 HWC arrays against prompts."""

    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

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

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.processor(
            text=list(prompts), return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
        )
        pooled = self.model.text_model(
            input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
        ).pooler_output
        return self.model.text_projection(pooled)

    def __call__(self, images: Sequence, prompts: Sequence[str]) -> np.ndarray:
        if len(images) != len(prompts):
            raise InputError(f"{len(images)} images but {len(prompts)} prompts")
        return clip_score_from_embeddings(self.image_embeddings(images), self.text_embeddings(prompts))


def clip_score_from_embeddings(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> np.ndarray:
    """100 * max(cos, 0) per row pair."""
    cos = torch.nn.functional.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
    return (CLIP_SCORE_SCALE * cos.clamp_min(0.0)).cpu().numpy()
