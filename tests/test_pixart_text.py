"""Caption cleaning (DeepFloyd-IF style, B.6), the tiny T5 encoder, valid-token packing and the learned
null caption under the prompt's mask."""

from __future__ import annotations

import pytest
import torch

from duca_common.layers import pack_caption
from duca_common.text import T5TextEncoder, clean_caption
from pixart_duca.pipeline import cfg_caption
from pixart_tiny import T5_DIM, build_t5, tiny_model


@pytest.mark.parametrize("raw,clean", [
    ("A Man on a HORSE.", "a man on a horse."),
    ("a%20cat%20on%20a%20mat", "a cat on a mat"),                       # url-unquote
    ("see https://example.com/cat.jpg now", "see now"),                 # urls and file names
    ("<b>bold</b> text &amp; more", "bold text more"),                  # html
    ("photo by @john_doe at the park", "photo by at the park"),         # @handles
    ("a cat 猫 on a mat", "a cat on a mat"),                            # CJK
    ("a \u2014 dash \u2013 here", "a - dash - here"),                   # dashes
    ("\u201cquoted\u201d", "quoted"),                                   # quotes normalised, then outer ones trimmed
    ("this-is-my-cute-cat", "this is my cute cat"),                     # slug separators
    ("free shipping on red shoes", "on red shoes"),
    ("image 1920x1080 of a dog", "image of a dog"),
    ("  two   spaces  ", "two spaces"),
])
def test_clean_caption_cases(raw, clean):
    assert clean_caption(raw) == clean


def test_clean_caption_is_stable_on_coco_style_captions():
    caption = "A horse drawn carriage in a historic city."
    assert clean_caption(caption) == caption.lower()


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    return build_t5(tmp_path_factory.mktemp("t5"))


def test_tiny_t5_encoding_and_null_caption(t5_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = T5TextEncoder(str(t5_folder))
    emb = enc.encode(["a man on a horse", "red cat"])
    assert emb.tokens.shape == (2, 120, T5_DIM) and emb.mask.shape == (2, 120)
    lengths = emb.mask.sum(1).tolist()
    assert lengths == [6, 3]                                  # words + EOS; padding to 120 is masked
    assert emb.mask[0, :6].all() and not emb.mask[0, 6:].any()
    model = tiny_model()
    cap = cfg_caption(model, emb)
    assert cap.tokens.shape == (4, 6, T5_DIM) and cap.lengths == [6, 3, 6, 3]     # [uncond, cond]
    null = model.y_embedder.y_embedding
    assert torch.equal(cap.tokens[0, :6], null[:6]) and torch.equal(cap.tokens[1, :3], null[:3])
    assert torch.equal(cap.tokens[2, :6], emb.tokens[0, :6]) and torch.equal(cap.tokens[3, :3], emb.tokens[1, :3])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T5TextEncoder(str(t5_folder / "missing"))


def test_pack_caption_moves_valid_tokens_first():
    tokens = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1)
    mask = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0]])
    cap = pack_caption(tokens, mask)
    assert cap.tokens[..., 0].tolist() == [[1, 3, 4], [5, 6, 7]]
    assert cap.mask.tolist() == [[1, 1, 1], [1, 0, 0]] and cap.lengths == [3, 1]
