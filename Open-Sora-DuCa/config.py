"""Inference config files in upstream OpenSora's format, read as data.

Upstream runs its config (``configs/opensora-v1-2/inference/sample.py``) as Python through mmengine. Here the
file is parsed with ``ast`` and never executed: every statement must assign a literal (a string, number,
bool, None, list, tuple) or a ``dict(key=literal, ...)`` call to one of the known keys below. Anything else,
an unknown key (a typo) or a value of the wrong type fails with the key, ``file:line`` and the allowed keys.

Keys are the reference's (``DuCa-Open-Sora/configs/opensora-v1-2/inference/sample.py`` and the
``cfg.get(...)`` names of its ``scripts/inference.py``), plus ``cache`` for this project's cache settings
(the reference hard-codes them in ``scripts/inference.py``). Keys that select kernels only, or features of
upstream that are not part of text-to-video sampling here, are accepted at their reference values and
refused otherwise with the supported value named.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field
from pathlib import Path

from duca_common.errors import UsageError
from duca_common.text import read_text_utf8

NOT_SUPPORTED = "not supported: this project samples text-to-video only"


@dataclass(frozen=True)
class Key:
    """One config key: allowed Python types, and (for settings the project implements one way only) the
    allowed values."""

    types: tuple[type, ...]
    help: str
    allowed: tuple | None = None


STR, INT, FLOAT, BOOL, NONE = (str,), (int,), (float, int), (bool,), (type(None),)
PROMPTS = (str, list, tuple)

# Top-level keys. A nested dict's keys are listed under its name.
SCHEMA: dict[str, Key | dict[str, Key]] = {
    # video
    "resolution": Key(STR, "resolution name, e.g. 480p (opensora_duca.aspect)"),
    "aspect_ratio": Key(STR, "H:W name such as 9:16, or a table key such as 0.56"),
    "image_size": Key((list, tuple) + NONE, "[H, W] in pixels; overrides resolution / aspect_ratio"),
    "num_frames": Key(INT + STR, "frames, or a name such as 2s (51)"),
    "fps": Key(INT, "fps the model is conditioned on"),
    "frame_interval": Key(INT, "save_fps defaults to fps // frame_interval"),
    "save_fps": Key(INT + NONE, "frame rate written into the mp4"),
    "save_dir": Key(STR, "output folder (--out / --save-dir)"),
    "seed": Key(INT, "sample k of a prompt draws its noise from seed + k"),
    "batch_size": Key(INT, "videos per forward pass", allowed=(1,)),
    "multi_resolution": Key(STR, "how size / fps reach the model", allowed=("STDiT2",)),
    "dtype": Key(STR, "STDiT3 and VAE dtype", allowed=("bf16", "fp32", "auto")),
    "condition_frame_length": Key(INT, "conditioning frames of loop / reference generation (unused here)"),
    "align": Key(INT + NONE, "frame alignment of loop / reference generation (unused here)"),
    "loop": Key(INT, f"loop generation: {NOT_SUPPORTED}", allowed=(1,)),
    "verbose": Key(INT, "0: quiet, 1: progress bar, 2: per-video lines"),
    # prompts
    "prompt": Key(PROMPTS + NONE, "a prompt or a list of prompts"),
    "prompt_path": Key(STR + NONE, "prompt file (--prompts-file / --prompt-path)"),
    "start_index": Key(INT + NONE, "first prompt of the file to sample (also offsets sample_NNNN names)"),
    "end_index": Key(INT + NONE, "one past the last prompt to sample"),
    "num_sample": Key(INT, "videos per prompt"),
    "prompt_as_path": Key(BOOL, "name files after the prompt (VBench)"),
    "sample_name": Key(STR + NONE, "file-name prefix"),
    "aes": Key(FLOAT + NONE, "aesthetic score appended to each prompt (None: nothing)"),
    "flow": Key(FLOAT + NONE, "motion score appended to each prompt (None: nothing)"),
    "camera_motion": Key(STR + NONE, "camera motion appended to each prompt (None: nothing)"),
    "llm_refine": Key(BOOL, f"prompt refinement through the OpenAI API: {NOT_SUPPORTED}", allowed=(False,)),
    "watermark": Key(BOOL, f"watermarking: {NOT_SUPPORTED}", allowed=(False,)),
    "reference_path": Key((list, tuple) + NONE, f"reference images / videos: {NOT_SUPPORTED}", allowed=(None,)),
    "mask_strategy": Key((list, tuple) + NONE, f"mask strategies: {NOT_SUPPORTED}", allowed=(None,)),
    # components
    "model": {
        "type": Key(STR, "the transformer", allowed=("STDiT3-XL/2",)),
        "from_pretrained": Key(STR + NONE, "STDiT3 folder / model.safetensors / hub id (--ckpt-path)"),
        "qk_norm": Key(BOOL, "RMSNorm on q and k (part of STDiT3-XL/2)", allowed=(True,)),
        "enable_flash_attn": Key(BOOL, "kernel choice only; the same math runs through PyTorch SDPA"),
        "enable_layernorm_kernel": Key(BOOL, "kernel choice only (apex fused LayerNorm); no effect here"),
    },
    "vae": {
        "type": Key(STR, "the video VAE", allowed=("OpenSoraVAE_V1_2",)),
        "from_pretrained": Key(STR + NONE, "VAE folder / model.safetensors / hub id (--vae-path)"),
        "micro_frame_size": Key(INT, "frames per temporal-VAE chunk (decides the output)", allowed=(17,)),
        "micro_batch_size": Key(INT, "frames per 2-D VAE call (memory only)", allowed=(4,)),
    },
    "text_encoder": {
        "type": Key(STR, "the text encoder", allowed=("t5",)),
        "from_pretrained": Key(STR, "T5 v1.1 XXL folder or hub id (--t5-path)"),
        "model_max_length": Key(INT, "T5 tokens (STDiT3's null caption has 300)", allowed=(300,)),
    },
    "scheduler": {
        "type": Key(STR, "the sampler", allowed=("rflow",)),
        "use_timestep_transform": Key(BOOL, "the resolution / length timestep shift", allowed=(True,)),
        "num_sampling_steps": Key(INT, "RFlow steps (--num-sampling-steps / --steps)"),
        "cfg_scale": Key(FLOAT, "classifier-free guidance scale"),
    },
    "cache": {
        "method": Key(STR, "none, fora, toca, duca or taylorseer (--cache)"),
        "preset": Key(STR + NONE, "a named OpenSora operating point (--preset)"),
        "fresh_ratio": Key(FLOAT + NONE, "DuCa / ToCa base fraction of MLP tokens recomputed"),
        "interval": Key(INT, "FORA / TaylorSeer cycle length"),
        "taylor_order": Key(INT, "TaylorSeer order"),
    },
}


def allowed_keys(schema: dict | None = None) -> list[str]:
    schema = SCHEMA if schema is None else schema
    return sorted(schema)


@dataclass
class InferenceConfig:
    """Values by dotted key (``"model.from_pretrained"``) and the line each was set on."""

    path: Path
    values: dict[str, object] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def get(self, key: str, default: object = None) -> object:
        return self.values.get(key, default)

    def where(self, key: str) -> str:
        return f"{self.path}:{self.lines[key]}"


class ConfigError(UsageError):
    """A config file that is not pure data, has an unknown key or a value of the wrong type."""


def _hint(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fail(path: Path, line: int, message: str) -> ConfigError:
    return ConfigError(f"config {path}:{line}: {message}")


def _literal(path: Path, node: ast.AST, what: str) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _fail(path, node.lineno, f"{what} = {ast.unparse(node)[:60]} is not a literal: a config holds data "
                                       f"only (strings, numbers, True/False/None, lists, tuples, dict(...)); it "
                                       f"is read, not run") from None


def _check_value(path: Path, line: int, name: str, key: Key, value: object) -> None:
    ok = isinstance(value, key.types) and not (isinstance(value, bool) and bool not in key.types)
    if not ok:
        expected = " or ".join("None" if t is type(None) else t.__name__ for t in key.types)
        raise _fail(path, line, f"{name} = {value!r} has the wrong type: expected {expected} ({key.help})")
    if key.allowed is not None and value not in key.allowed:
        raise _fail(path, line, f"{name} = {value!r} is not supported: allowed {list(key.allowed)} ({key.help})")


def parse_config(path: str | Path) -> InferenceConfig:
    """Read ``path`` as data (see the module docstring); ``ConfigError`` names the key and ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist; pass the path of an inference config such as "
                          f"configs/opensora-v1-2/inference/sample.py")
    try:
        source = read_text_utf8(path, "config")
    except UsageError as err:                      # not UTF-8: the message names the line and byte offset
        raise ConfigError(str(err)) from None
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as err:
        raise ConfigError(f"config {path}:{err.lineno}: not valid Python syntax: {err.msg}") from None
    config = InferenceConfig(path)
    for i, stmt in enumerate(tree.body):
        if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
                and isinstance(stmt.value.value, str):
            continue                                         # a module docstring
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise _fail(path, stmt.lineno, f"{ast.unparse(stmt).splitlines()[0][:60]!r} is not allowed: a config "
                                           f"holds only assignments 'key = value' of the keys "
                                           f"{allowed_keys()}")
        name = stmt.targets[0].id
        if name not in SCHEMA:
            raise _fail(path, stmt.lineno, f"unknown key {name!r}{_hint(name, SCHEMA)}; allowed keys: {allowed_keys()}")
        if name in config.lines or any(k.startswith(name + ".") for k in config.lines):
            first = config.lines.get(name) or next(v for k, v in config.lines.items() if k.startswith(name + "."))
            raise _fail(path, stmt.lineno, f"{name!r} is assigned twice (first on line {first}); keep one")
        spec = SCHEMA[name]
        if isinstance(spec, Key):
            value = _literal(path, stmt.value, name)
            _check_value(path, stmt.lineno, name, spec, value)
            config.values[name], config.lines[name] = value, stmt.lineno
            continue
        call = stmt.value
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "dict"
                and not call.args and all(kw.arg is not None for kw in call.keywords)):
            raise _fail(path, stmt.lineno, f"{name} must be dict(key=value, ...) with the keys {allowed_keys(spec)}")
        for kw in call.keywords:
            dotted = f"{name}.{kw.arg}"
            line = kw.value.lineno
            if kw.arg not in spec:
                raise _fail(path, line, f"unknown key {dotted!r}{_hint(kw.arg, spec)}; allowed keys of {name}: "
                                        f"{allowed_keys(spec)}")
            if dotted in config.lines:
                raise _fail(path, line, f"{dotted!r} is given twice")
            value = _literal(path, kw.value, dotted)
            _check_value(path, line, dotted, spec[kw.arg], value)
            config.values[dotted], config.lines[dotted] = value, line
    return config
