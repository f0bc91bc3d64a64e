"""Tiny PixArt stack for the CPU tests: a random PixArt checkpoint saved like the official .pth, a random
T5 encoder with a tokenizer built here, and a tiny SD-style VAE saved with the deprecated attention names."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pixart_duca.model import PixArt, PixArtConfig

T5_DIM = 16
WORDS = ("a man horse dog cat red blue the on with of in at sitting next to each other park city tennis "
         "racket serve carriage historic two gray fire hydrants").split()
# Latent 8x8 -> 64 px images, 16 tokens; head width 72 so the head count is inferred as for XL/2.
TINY = PixArtConfig(input_size=8, hidden_size=144, depth=3, num_heads=2, caption_channels=T5_DIM)
TINY_MS = PixArtConfig(input_size=8, hidden_size=144, depth=3, num_heads=2, caption_channels=T5_DIM, multi_scale=True,
                       lewei_scale=2.0)


def tiny_model(config: PixArtConfig = TINY, seed: int = 0, **kwargs) -> PixArt:
    torch.manual_seed(seed)
    model = PixArt(config, **kwargs)
    with torch.no_grad():   # PixArt zero-initialises nothing here; make the gates/outputs non-trivial
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def save_pth(model: PixArt, path: Path) -> Path:
    """Saved as the official files are: a dict with the weights under 'state_dict'."""
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def build_t5(folder: Path, seed: int = 0) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in WORDS]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + [("\u2581", -3.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(vocab), d_model=T5_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      feed_forward_proj="gated-gelu")
    T5EncoderModel(config).save_pretrained(folder)
    return folder


def build_vae(folder: Path, deprecated_names: bool = True, seed: int = 0) -> Path:
    """A 4-level AutoencoderKL (8x downsampling like the SD VAE) with 8 channels per level."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dict(vae.config)))
    sd = vae.state_dict()
    if deprecated_names:
        new_to_old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        renamed = {}
        for k, v in sd.items():
            for new, old in new_to_old.items():
                if f".attentions.0.{new}." in k:
                    k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
            renamed[k] = v
        sd = renamed
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder
