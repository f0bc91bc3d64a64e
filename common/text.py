"""T5 text conditioning (PixArt-alpha, models.md B.6; reused by OpenSora, C.7): caption cleaning,
tokenisation, encoding.

* ``clean_caption``: DeepFloyd-IF style cleaning, applied twice as upstream does. Upstream uses ``ftfy``
  and ``bs4``; this version needs neither: HTML is stripped with the standard library's parser and
  ``ftfy.fix_text`` is replaced by NFC normalisation plus HTML unescaping. Captions without mojibake
  (COCO, PartiPrompts) come out the same.
* ``T5TextEncoder``: ``transformers.T5EncoderModel`` and its tokenizer from a local folder or a hub id,
  120 tokens, padding to max length, EOS appended; fp32 like upstream.
"""

from __future__ import annotations

import html
import re
import unicodedata
import urllib.parse as ul
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import torch

from .validate import looks_like_hub_id

T5_MAX_LENGTH = 120   # PixArt-alpha's T5 sequence length (B.6); OpenSora passes its own 300 (C.7)

CLEANING_PASSES = 2   # upstream calls clean_caption twice (B.6)

_URL_TLDS = r"(?:com|co|ru|net|org|edu|gov|it)"
_CJK_RANGES = ("\u31c0-\u31ef", "\u31f0-\u31ff", "\u3200-\u32ff", "\u3300-\u33ff", "\u3400-\u4dbf",
               "\u4dc0-\u4dff", "\u4e00-\u9fff")
_DASHES = ("\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40\u301c\u3030\u30a0"
           "\ufe31\ufe32\ufe58\ufe63\uff0d")
_BAD_PUNCT = "#®•©™&@·º½¾¿¡§~()\\[\\]{}|\\\\/*"
_FILE_EXT = r"(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"

# Applied in order before the HTML / unicode fixing (pattern, replacement).
_RULES_BEFORE = [
    (r"<person>", "person"),
    (rf"\b((?:https?:(?:/{{1,3}}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.]{_URL_TLDS}[\w/-]*\b/?(?!@)))", ""),   # urls
    (rf"\b((?:www:(?:/{{1,3}}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.]{_URL_TLDS}[\w/-]*\b/?(?!@)))", ""),
]
_RULES_MIDDLE = [
    (r"@[\w\d]+\b", ""),                                     # @handles
    *[(f"[{r}]+", "") for r in _CJK_RANGES],                 # CJK strokes, symbols, ideographs
    (f"[{_DASHES}]+", "-"),                                  # every dash -> "-"
    (r"[`´«»“”¨]", '"'),                                     # quotes -> one standard
    (r"[‘’]", "'"),
    (r"&quot;?", ""),
    (r"&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),             # ip addresses
    (r"\d:\d\d\s+$", ""),                                    # article ids
    (r"\\n", " "),                                           # literal "\n"
    (r"#\d{1,3}\b", ""),
    (r"#\d{5,}\b", ""),
    (r"\b\d{6,}\b", ""),
    (rf"[\S]+\.{_FILE_EXT}", ""),                            # file names
    (r"[\"']{2,}", '"'),
    (r"[\.]{2,}", " "),
    (f"[{_BAD_PUNCT}]+", " "),
    (r"\s+\.\s+", " "),
]
_RULES_AFTER = [
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),                      # jc6640
    (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),                      # jc6640vc
    (r"\b\d+[a-zA-Z]+\d+\b", ""),                            # 6640vc231
    (r"(worldwide\s+)?(free\s+)?shipping", ""),
    (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""),
    (rf"\b{_FILE_EXT}(\s+cover)?\b", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),     # j2d1a2a...
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),                     # sizes 1920x1080
    (r"\b\s+\:\s+", ": "),
    (r"(\D[,\./])\b", r"\1 "),
    (r"\s+", " "),
]
_RULES_TRIM = [
    (r"^[\"']([\w\W]+)[\"']$", r"\1"),
    (r"^['_,\-:;]", ""),
    (r"['_,\-:\-+]$", ""),
    (r"^\.\S+$", ""),
]
_UNDERSCORE_DASH = re.compile(r"[-_]")
MAX_WORD_SEPARATORS = 3   # more '-'/'_' than this: the caption is slug-like, separators become spaces


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def strip_html(text: str) -> str:
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def _apply(rules: list[tuple[str, str]], text: str) -> str:
    for pattern, repl in rules:
        text = re.sub(pattern, repl, text)
    return text


def clean_caption_once(caption: str) -> str:
    text = ul.unquote_plus(str(caption)).strip().lower()
    text = _apply(_RULES_BEFORE, text)
    text = strip_html(text)
    text = _apply(_RULES_MIDDLE, text)
    if len(_UNDERSCORE_DASH.findall(text)) > MAX_WORD_SEPARATORS:
        text = _UNDERSCORE_DASH.sub(" ", text)
    text = unicodedata.normalize("NFC", text)            # stands in for ftfy.fix_text
    text = html.unescape(html.unescape(text))
    text = _apply(_RULES_AFTER, text)
    text = _apply(_RULES_TRIM, text)
    return text.strip()


def clean_caption(caption: str, passes: int = CLEANING_PASSES) -> str:
    for _ in range(passes):
        caption = clean_caption_once(caption)
    return caption


@dataclass
class TextEmbedding:
    """T5 output for B prompts: ``tokens`` (B, 120, D) and ``mask`` (B, 120) of 0/1."""

    tokens: torch.Tensor
    mask: torch.Tensor


class T5TextEncoder:
    """T5 encoder + tokenizer from a local folder or hub id (the folder holds both, like PixArt's t5 dir)."""

    def __init__(self, path_or_id: str, device: torch.device | str = "cpu", max_length: int = T5_MAX_LENGTH,
                 clean: bool = True, dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoTokenizer, T5EncoderModel

        local = Path(path_or_id)
        if not local.exists() and not looks_like_hub_id(path_or_id):
            raise FileNotFoundError(f"--t5_path {path_or_id!r} does not exist; pass the t5-v1_1-xxl folder (hub repo "
                                    f"PixArt-alpha/PixArt-alpha, subfolder t5-v1_1-xxl) or a hub id such as "
                                    f"DeepFloyd/t5-v1_1-xxl")
        self.tokenizer = AutoTokenizer.from_pretrained(path_or_id)
        self.model = T5EncoderModel.from_pretrained(path_or_id, dtype=dtype).to(device).eval()
        self.device = torch.device(device)
        self.max_length = max_length
        self.clean = clean

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        texts = [clean_caption(p) for p in prompts] if self.clean else list(prompts)
        return self.tokenizer(texts, max_length=self.max_length, padding="max_length", truncation=True,
                              add_special_tokens=True, return_tensors="pt")

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbedding:
        tok = self.tokenize(prompts)
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return TextEmbedding(hidden, mask)


UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def read_text_utf8(path: Path, flag: str) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped). Any other encoding is a
    ``UsageError`` naming ``flag``, the file, the line and the byte offset of the first bad byte; a NUL
    byte (UTF-16 without a BOM) is refused the same way."""
    from .runtime import UsageError

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{flag} {str(path)!r} does not exist; pass a text file with one prompt per line") from None
    except IsADirectoryError:
        raise UsageError(f"{flag} {str(path)!r} is a folder; pass a text file with one prompt per line") from None
    except OSError as exc:
        raise UsageError(f"{flag} {str(path)!r} cannot be read ({exc.strerror}); pass a readable text file") from None
    fix = "save it as UTF-8 (with or without BOM)"
    if data.startswith(UTF16_BOMS):
        raise UsageError(f"{flag} {str(path)!r} is UTF-16 (byte-order mark at line 1, byte offset 0); {fix}")
    body = data[len(UTF8_BOM):] if data.startswith(UTF8_BOM) else data
    skip = len(data) - len(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + skip
        raise UsageError(f"{flag} {str(path)!r} is not UTF-8: byte 0x{data[offset]:02x} at line "
                         f"{_line_of(data, offset)}, byte offset {offset}; {fix}") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise UsageError(f"{flag} {str(path)!r} has a NUL byte at line {_line_of(data, nul)}, byte offset {nul} "
                         f"(UTF-16 without a byte-order mark?); {fix}")
    return text


def read_prompt_lines(path: Path, flag: str) -> list[str]:
    """One prompt per line, stripped; trailing blank lines are ignored. The file must be UTF-8
    (:func:`read_text_utf8`). A blank line inside the file is an error (``UsageError`` naming ``flag``),
    because output i must pair with line i of the file."""
    from .runtime import UsageError

    lines = read_text_utf8(path, flag).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if empty:
        raise UsageError(f"{flag} {str(path)!r} has empty lines (line {empty[0]}, {len(empty)} in all); remove them "
                         f"so output i pairs with line i")
    return [line.strip() for line in lines]
