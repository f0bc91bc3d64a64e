"""Regenerate the golden outputs of the reference DuCa code under ``tests/fixtures/reference/``.

    python -m duca_scripts.make_reference_fixtures --reference /path/to/DuCa [--model dit|pixart|opensora|all]

``--reference`` is a local checkout of https://github.com/Shenyi-Z/DuCa (folders ``DuCa-DiT``,
``DuCa-PixArt-alpha``, ``DuCa-Open-Sora``). The reference is imported at run time only; nothing of it
is stored, only numbers: final latents, the per step x block x module decisions and the recomputed
token indices (see ``duca_scripts.reference_fixtures`` for the tiny geometries, the seeded weights and
the file format). Each model runs in its own subprocess because the reference forks reuse top-level
package names (``diffusion``, ``models``).

What must be stubbed to import the reference on a CPU machine (``sys.modules`` entries installed by
this script only, inside its own process):

* DiT: nothing. ``models.py`` needs timm (installed). The step-type rule is the one thing replaced for
  two cases: the DuCa fork has no ToCa or FORA switch, so for 'toca' and 'fora' its ``cal_type`` result
  is rewritten after the call (every non-full block becomes its own 'ToCa' or 'FORA' type, both of which
  its ``DiTBlock`` implements); its cycle rule (``force_scheduler``) is untouched.
* PixArt-alpha: ``mmcv`` (only ``Registry`` for the model builder; mmcv has no wheel for this torch),
  ``diffusion.utils.logger`` (the training logger, built on mmcv.runner; only called with a training config),
  ``xformers`` (``xformers.ops.memory_efficient_attention`` and ``BlockDiagonalMask``: CUDA kernels;
  replaced by an exact softmax-attention over the same block-diagonal mask) and the package
  ``__init__`` files of ``diffusion`` / ``diffusion.model`` (they import every sampler, IDDPM training
  code and the T5 / LLaVA encoders, none of which the cached transformer and DPM-Solver need).
* OpenSora: ``mmengine`` (only its ``Registry`` decorator), ``colossalai`` (checkpoint I/O in
  ``opensora.utils.ckpt_utils``; colossalai pins torch <= 2.5), ``xformers`` (as for PixArt) and the package
  ``__init__`` files of ``opensora``, ``opensora.models``, ``opensora.models.stdit``, ``opensora.schedulers``
  and ``opensora.schedulers.iddpm`` (they import every model, VAE and scheduler of the fork). flash-attn and
  apex are imported lazily by the reference and not on its CPU path. Not stubbed: ``rotary_embedding_torch``
  (the reference's RoPE; install ``rotary-embedding-torch==0.5.3 beartype`` for this run only), einops, timm,
  transformers. Three rules are substituted after its ``cal_type`` call: 'none' (its own ``lists_full``),
  'toca' (its own ``lists_ToCa``: aggressive entries become ToCa), DuCa is its default ``lists_ToCa_CN``.
  The run uses RFlow's base grid without the timestep transform (which only reshapes the grid).

Also needed for PixArt: einops (the reference imports it; the project's environment has it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

from duca_common.cache.presets import REFERENCE_STALENESS
from duca_common.runtime import HelpFormatter
from duca_scripts import reference_fixtures as rf

MODELS = ("dit", "pixart", "opensora")
# The reference PixArt scripts/inference.py sampler: DPM-Solver++ of order 2, multistep (models.md B.7).
PIXART_SOLVER_ORDER = 2


def _reference_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def _import_from(folder: Path, *names: str) -> list[types.ModuleType]:
    """Import top-level modules of a reference fork (its scripts import them by bare name)."""
    import importlib
    sys.path.insert(0, str(folder))
    return [importlib.import_module(n) for n in names]


# ------------------------------------------------------------------------------------------------ DiT

def run_dit(root: Path) -> None:
    from dit_duca.models import DiT

    folder = root / "DuCa-DiT"
    if not (folder / "models.py").is_file():
        raise SystemExit(f"--reference {root}: no DuCa-DiT/models.py; pass the root of a DuCa checkout")
    ref_models, ref_diffusion = _import_from(folder, "models", "diffusion")
    geo = rf.DiTGeometry()
    ours = DiT(input_size=geo.input_size, patch_size=geo.patch_size, in_channels=geo.in_channels,
               hidden_size=geo.hidden_size, depth=geo.depth, num_heads=geo.num_heads, mlp_ratio=geo.mlp_ratio,
               num_classes=geo.num_classes)
    state = rf.seeded_weights(ours, rf.DIT_SEED)
    ref = ref_models.DiT(input_size=geo.input_size, patch_size=geo.patch_size, in_channels=geo.in_channels,
                         hidden_size=geo.hidden_size, depth=geo.depth, num_heads=geo.num_heads,
                         mlp_ratio=geo.mlp_ratio, num_classes=geo.num_classes).eval()
    pos_diff = float((ref.pos_embed - state["pos_embed"]).abs().max())
    ref.load_state_dict(state, strict=True)

    original_cal_type = ref_models.cal_type
    original_cutfresh = ref_models.cache_cutfresh
    record: dict = {}

    def cal_type(cache_dic, current):
        original_cal_type(cache_dic, current)
        rule = record["rule"]
        if current["type"] != "full" and rule != "reference":
            current["type"] = {"toca": "ToCa", "fora": "FORA"}[rule]
        record["types"][(current["step"], current["layer"])] = current["type"]

    def cache_cutfresh(cache_dic, tokens, current):
        idx, fresh = original_cutfresh(cache_dic, tokens, current)
        record["index"][(current["step"], current["layer"], current["module"])] = idx.cpu().numpy()
        return idx, fresh

    ref_models.cal_type = cal_type
    ref_models.cache_cutfresh = cache_cutfresh

    diffusion = ref_diffusion.create_diffusion(str(rf.DIT_STEPS))
    n_tok = (geo.input_size // geo.patch_size) ** 2
    arrays: dict[str, np.ndarray] = {}
    cases = []
    for case in rf.DIT_CASES:
        record.update(rule=case.rule, types={}, index={})
        z = rf.dit_noise(geo)
        kwargs = dict(y=rf.dit_labels(geo), cfg_scale=rf.DIT_CFG, cache_type=case.cache_type,
                      fresh_ratio=case.fresh_ratio, force_fresh="global", fresh_threshold=case.fresh_threshold,
                      ratio_scheduler="ToCa", soft_fresh_weight=REFERENCE_STALENESS, test_FLOPs=False)
        with torch.no_grad():
            out = diffusion.ddim_sample_loop(ref.forward_with_cfg, z.shape, z, clip_denoised=False,
                                             model_kwargs=kwargs, progress=False, device="cpu")
        k_steps = rf.DIT_STEPS
        actions = np.zeros((k_steps, geo.depth, 2), dtype=np.int8)
        tokens = np.zeros((k_steps, geo.depth, 2), dtype=np.int32)
        trunk = np.zeros(k_steps, dtype=bool)
        events = []
        for p in range(k_steps):
            s = k_steps - 1 - p                      # the reference's step index counts down
            for b in range(geo.depth):
                kind = record["types"][(s, b)]
                if kind == "full":
                    actions[p, b] = (rf.FULL, rf.FULL)
                    tokens[p, b] = (n_tok, n_tok)
                elif kind == "FORA":
                    actions[p, b] = (rf.REUSE, rf.REUSE)
                elif kind == "ToCa":
                    idx = record["index"][(s, b, "mlp")]
                    k = idx.shape[1]
                    actions[p, b] = (rf.REUSE, rf.PARTIAL if k else rf.REUSE)
                    tokens[p, b, 1] = k
                    if k:
                        events.append(idx)
                else:                                 # aggressive: the block adds nothing
                    actions[p, b] = (rf.SKIP, rf.SKIP)
            trunk[p] = record["types"][(s, geo.depth - 1)] == "aggressive"
        arrays[f"{case.name}/latents"] = out.numpy()
        arrays[f"{case.name}/actions"] = actions
        arrays[f"{case.name}/tokens"] = tokens
        arrays[f"{case.name}/trunk_reused"] = trunk
        arrays[f"{case.name}/indices"] = rf.pack_indices(events)
        cases.append(dict(name=case.name, preset=case.preset, cache_type=case.cache_type,
                          fresh_ratio=case.fresh_ratio, fresh_threshold=case.fresh_threshold, rule=case.rule,
                          partial_events=len(events)))
        print(f"dit {case.name}: {len(events)} partial events, |latents| max {float(out.abs().max()):.4f}")
    meta = dict(model="dit", reference_commit=_reference_commit(root), geometry=rf.geometry_dict(geo),
                weights_seed=rf.DIT_SEED, weights_checksum=rf.checksum(state), noise_seed=rf.DIT_NOISE_SEED,
                label=rf.DIT_LABEL, cfg_scale=rf.DIT_CFG, steps=rf.DIT_STEPS, sampler="DDIM eta 0",
                pos_embed_max_abs_diff=pos_diff, cases=cases, torch=torch.__version__,
                index_layout="per partial event in (evaluation step, block) order: rows 0..2B-1, k sorted "
                             "indices each, int16")
    rf.save_fixture("dit", meta, arrays)


# ------------------------------------------------------------------------------------------------ PixArt

class _BlockDiagonalMask:
    """xformers' ``BlockDiagonalMask`` as the reference uses it: query blocks of ``q_seqlen`` attend only to
    the key block of the same index (``kv_seqlen``)."""

    def __init__(self, q_seqlen, kv_seqlen):
        self.q_seqlen, self.kv_seqlen = list(q_seqlen), list(kv_seqlen)

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None):
        return cls(q_seqlen, kv_seqlen if kv_seqlen is not None else q_seqlen)

    def materialize(self, shape, dtype=torch.float32, device="cpu"):
        bias = torch.full((sum(self.q_seqlen), sum(self.kv_seqlen)), float("-inf"), dtype=dtype, device=device)
        q0 = k0 = 0
        for q, k in zip(self.q_seqlen, self.kv_seqlen, strict=True):
            bias[q0:q0 + q, k0:k0 + k] = 0
            q0, k0 = q0 + q, k0 + k
        return bias.expand(shape)


def _memory_efficient_attention(q, k, v, attn_bias=None, p=0.0, scale=None):
    """xformers' (B, M, H, K) attention on the CPU through SDPA. A ``BlockDiagonalMask`` (the reference's
    packed cross-attention: one row holding every sample's queries and text tokens) is computed block by
    block, which is what the mask means: each sample's queries attend to its own text tokens only."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))           # (B, H, M, K)
    if isinstance(attn_bias, _BlockDiagonalMask):
        outs, q0, k0 = [], 0, 0
        for nq, nk in zip(attn_bias.q_seqlen, attn_bias.kv_seqlen, strict=True):
            outs.append(sdpa(q[:, :, q0:q0 + nq], k[:, :, k0:k0 + nk], v[:, :, k0:k0 + nk], dropout_p=p))
            q0, k0 = q0 + nq, k0 + nk
        return torch.cat(outs, dim=2).transpose(1, 2).contiguous()      # xformers returns a contiguous tensor
    mask = None if attn_bias is None else attn_bias.reshape(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return sdpa(q, k, v, attn_mask=mask, dropout_p=p).transpose(1, 2).contiguous()


def _install_stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


class _Registry:
    """mmcv / mmengine ``Registry``: the reference only decorates classes with ``register_module``."""

    def __init__(self, name, *args, **kwargs):
        self.name = name

    def register_module(self, *args, **kwargs):
        return (lambda cls: cls) if not args or not isinstance(args[0], type) else args[0]


def _stub_xformers() -> None:
    fmha = _install_stub("xformers.ops.fmha", BlockDiagonalMask=_BlockDiagonalMask)
    _install_stub("xformers.ops.fmha.attn_bias", BlockDiagonalMask=_BlockDiagonalMask)
    ops = _install_stub("xformers.ops", memory_efficient_attention=_memory_efficient_attention, fmha=fmha)
    _install_stub("xformers", ops=ops)


def _stub_pixart_imports(folder: Path) -> None:
    """mmcv, xformers and the heavy package __init__ files (see the module docstring)."""
    _install_stub("mmcv", Registry=_Registry)
    _stub_xformers()
    for package in ("diffusion", "diffusion.model", "diffusion.model.nets"):
        _install_stub(package, __path__=[str(folder / package.replace(".", "/"))])
    # the training logger (mmcv.runner's distributed helpers); the model only calls it with a training config
    _install_stub("diffusion.utils", __path__=[])
    _install_stub("diffusion.utils.logger", get_root_logger=lambda *a, **k: None)


def run_pixart(root: Path) -> None:
    import importlib

    from pixart_duca.model import PATCH_SIZE, PixArt, PixArtConfig

    folder = root / "DuCa-PixArt-alpha"
    if not (folder / "diffusion" / "model" / "nets" / "PixArt.py").is_file():
        raise SystemExit(f"--reference {root}: no DuCa-PixArt-alpha/diffusion/model/nets/PixArt.py")
    _stub_pixart_imports(folder)
    sys.path.insert(0, str(folder))
    ref_net = importlib.import_module("diffusion.model.nets.PixArt")
    ref_dpms = importlib.import_module("diffusion.dpm_solver")

    geo = rf.PixArtGeometry()
    ours = PixArt(PixArtConfig(input_size=geo.input_size, hidden_size=geo.hidden_size, depth=geo.depth,
                               num_heads=geo.num_heads, caption_channels=geo.caption_channels,
                               text_tokens=geo.text_tokens))
    state = rf.seeded_weights(ours, rf.PIXART_SEED, gain=rf.PIXART_GAIN)
    ref = ref_net.PixArt(input_size=geo.input_size, hidden_size=geo.hidden_size, depth=geo.depth,
                         num_heads=geo.num_heads, caption_channels=geo.caption_channels,
                         model_max_length=geo.text_tokens).eval()
    pos_diff = float((ref.pos_embed - state["pos_embed"]).abs().max())
    ref.load_state_dict(state, strict=True)

    original_cal_type, original_cutfresh = ref_net.cal_type, ref_net.cache_cutfresh
    record: dict = {}

    def cal_type(cache_dic=None, current=None):
        original_cal_type(cache_dic=cache_dic, current=current)
        if current["type"] != "full" and record["rule"] != "reference":
            current["type"] = {"toca": "ToCa", "fora": "FORA"}[record["rule"]]
        record["types"][(current["step"], current["layer"])] = current["type"]

    def cache_cutfresh(cache_dic, tokens, current):
        idx, fresh = original_cutfresh(cache_dic, tokens, current)
        record["index"][(current["step"], current["layer"], current["module"])] = idx.cpu().numpy()
        return idx, fresh

    ref_net.cal_type, ref_net.cache_cutfresh = cal_type, cache_cutfresh
    z, caption, mask = rf.pixart_inputs(geo)
    null_y = ref.y_embedder.y_embedding[None].repeat(1, 1, 1)[:, None]
    modules = ("attn", "cross-attn", "mlp")
    n_tok = (geo.input_size // PATCH_SIZE) ** 2
    arrays: dict[str, np.ndarray] = {}
    cases = []
    for case in rf.PIXART_CASES:
        record.update(rule=case.rule, types={}, index={})
        kwargs = dict(mask=mask, cache_type=case.cache_type, fresh_ratio=case.fresh_ratio,
                      fresh_threshold=case.fresh_threshold, force_fresh="global", ratio_scheduler="ToCa",
                      soft_fresh_weight=REFERENCE_STALENESS, test_FLOPs=False)
        solver = ref_dpms.DPMS(ref.forward_with_dpmsolver, condition=caption[:, None], uncondition=null_y,
                               cfg_scale=rf.PIXART_CFG, model_kwargs=kwargs)
        with torch.no_grad():
            out = solver.sample(z.clone(), steps=rf.PIXART_STEPS, order=PIXART_SOLVER_ORDER, skip_type="time_uniform",
                                method="multistep", model_kwargs=kwargs)
        k_steps = rf.PIXART_STEPS
        actions = np.zeros((k_steps, geo.depth, 3), dtype=np.int8)
        tokens = np.zeros((k_steps, geo.depth, 3), dtype=np.int32)
        trunk = np.zeros(k_steps, dtype=bool)
        events = []
        for p in range(k_steps):                      # the reference's step counts up
            for b in range(geo.depth):
                kind = record["types"][(p, b)]
                if kind == "full":
                    actions[p, b] = rf.FULL
                    tokens[p, b] = n_tok
                elif kind == "FORA":
                    actions[p, b] = rf.REUSE
                elif kind == "ToCa":
                    actions[p, b, 0] = rf.REUSE
                    for m in (1, 2):
                        idx = record["index"][(p, b, modules[m])]
                        k = idx.shape[1]
                        tokens[p, b, m] = k
                        if k == n_tok:        # a clamped ratio of 1: every token through the partial path
                            actions[p, b, m] = rf.FULL
                        elif k:
                            actions[p, b, m] = rf.PARTIAL
                            events.append(idx)
                        else:
                            actions[p, b, m] = rf.REUSE
                else:
                    actions[p, b] = rf.SKIP
            trunk[p] = record["types"][(p, geo.depth - 1)] == "aggressive"
        arrays[f"{case.name}/latents"] = out.numpy()
        arrays[f"{case.name}/actions"] = actions
        arrays[f"{case.name}/tokens"] = tokens
        arrays[f"{case.name}/trunk_reused"] = trunk
        arrays[f"{case.name}/indices"] = rf.pack_indices(events)
        cases.append(dict(name=case.name, preset=case.preset, cache_type=case.cache_type,
                          fresh_ratio=case.fresh_ratio, fresh_threshold=case.fresh_threshold, rule=case.rule,
                          partial_events=len(events)))
        print(f"pixart {case.name}: {len(events)} partial events, |latents| max {float(out.abs().max()):.4f}")
    meta = dict(model="pixart", reference_commit=_reference_commit(root), geometry=rf.geometry_dict(geo),
                weights_seed=rf.PIXART_SEED, weights_gain=[list(g) for g in rf.PIXART_GAIN],
                weights_checksum=rf.checksum(state), noise_seed=rf.PIXART_NOISE_SEED,
                cfg_scale=rf.PIXART_CFG, steps=rf.PIXART_STEPS, sampler="DPM-Solver++ 2M, time-uniform",
                pos_embed_max_abs_diff=pos_diff, cases=cases, torch=torch.__version__,
                index_layout="per partial event in (step, block, module) order: rows 0..2B-1 ([uncond, cond]), "
                             "k sorted indices each, int16")
    rf.save_fixture("pixart", meta, arrays)


# ------------------------------------------------------------------------------------------------ OpenSora

def _stub_opensora_imports(folder: Path) -> None:
    """mmengine (registry), colossalai (checkpoint I/O), xformers, and the package __init__ files that
    import every model and scheduler of the fork (see the module docstring)."""
    _install_stub("opensora.registry", MODELS=_Registry("model"), SCHEDULERS=_Registry("scheduler"))
    _install_stub("opensora.utils", __path__=[])
    _install_stub("opensora.utils.ckpt_utils", load_checkpoint=lambda *a, **k: None)
    _stub_xformers()
    root = folder / "opensora"
    for package in ("opensora", "opensora.models", "opensora.models.stdit", "opensora.schedulers",
                    "opensora.schedulers.iddpm"):
        _install_stub(package, __path__=[str(root.parent / package.replace(".", "/"))])


def run_opensora(root: Path) -> None:
    import importlib

    from opensora_duca.stdit3 import PATCH_SIZE, STDiT3, STDiT3Config

    folder = root / "DuCa-Open-Sora"
    if not (folder / "opensora" / "models" / "stdit" / "stdit3.py").is_file():
        raise SystemExit(f"--reference {root}: no DuCa-Open-Sora/opensora/models/stdit/stdit3.py")
    try:
        import rotary_embedding_torch  # noqa: F401
    except ImportError as exc:
        raise SystemExit("the OpenSora reference needs rotary_embedding_torch: pip install "
                         "rotary-embedding-torch==0.5.3 beartype (its pinned version)") from exc
    _stub_opensora_imports(folder)
    sys.path.insert(0, str(folder))
    ref_stdit = importlib.import_module("opensora.models.stdit.stdit3")
    ref_rf = importlib.import_module("opensora.schedulers.rf")

    geo = rf.OpenSoraGeometry()
    ours = STDiT3(STDiT3Config(hidden_size=geo.hidden_size, depth=geo.depth, num_heads=geo.num_heads,
                               caption_channels=geo.caption_channels, model_max_length=geo.text_tokens,
                               input_sq_size=geo.pixels))
    state = rf.seeded_weights(ours, rf.OPENSORA_SEED, skip=("rope.freqs",))
    ref = ref_stdit.STDiT3(ref_stdit.STDiT3Config(
        depth=geo.depth, hidden_size=geo.hidden_size, patch_size=PATCH_SIZE, num_heads=geo.num_heads,
        caption_channels=geo.caption_channels, model_max_length=geo.text_tokens, input_sq_size=geo.pixels)).eval()
    rope_diff = float((ref.rope.freqs - state["rope.freqs"]).abs().max())
    ref.load_state_dict(state, strict=True)

    original_cal_type, original_cutfresh = ref_stdit.cal_type, ref_stdit.cache_cutfresh
    record: dict = {}

    def cal_type(cache_dic, current):
        types = original_cal_type(cache_dic, current)
        if record["rule"] == "none":
            types = {m: "full" for m in ("attn", "cross-attn", "mlp")}
        elif record["rule"] == "toca":
            types = {m: ("ToCa" if types[m] == "aggressive" else types[m]) for m in ("attn", "cross-attn", "mlp")}
        types["all_aggressive"] = all(types[m] == "aggressive" for m in ("attn", "cross-attn", "mlp"))
        record["types"][(current["step"], current["flag"], current["layer"])] = dict(types)
        return types

    def cache_cutfresh(cache_dic, tokens, current):
        idx, fresh = original_cutfresh(cache_dic, tokens, current)
        record["index"][(current["step"], current["flag"], current["layer"], current["module"])] = idx.cpu().numpy()
        return idx, fresh

    ref_stdit.cal_type, ref_stdit.cache_cutfresh = cal_type, cache_cutfresh
    z, caption, mask = rf.opensora_inputs(geo)

    class TextEncoder:                                 # T5 stand-in: the caption features and the null caption
        def encode(self, prompts):
            return {"y": caption[:, None], "mask": mask}

        def null(self, n):
            return ref.y_embedder.y_embedding[None].repeat(n, 1, 1)[:, None]

    modules = ("attn", "cross-attn", "mlp")
    n_tok = (geo.latent[0] // PATCH_SIZE[0]) * (geo.latent[1] // PATCH_SIZE[1]) * (geo.latent[2] // PATCH_SIZE[2])
    arrays: dict[str, np.ndarray] = {}
    cases = []
    for case in rf.OPENSORA_CASES:
        record.update(rule=case.rule, types={}, index={})
        sampler = ref_rf.RFLOW(num_sampling_steps=rf.OPENSORA_STEPS, cfg_scale=rf.OPENSORA_CFG,
                               use_timestep_transform=False)
        extra = dict(fps=torch.tensor([geo.fps]), height=torch.tensor([float(geo.pixels)]),
                     width=torch.tensor([float(geo.pixels)]), test_FLOPs=False, **rf.OPENSORA_CACHE)
        with torch.no_grad():
            out = sampler.sample(ref, TextEncoder(), z.clone(), ["prompt"], "cpu", additional_args=extra,
                                 progress=False)
        k_steps, blocks = rf.OPENSORA_STEPS, 2 * geo.depth
        actions = np.zeros((k_steps, blocks, 3), dtype=np.int8)
        tokens = np.zeros((k_steps, blocks, 3), dtype=np.int32)
        trunk = np.zeros(k_steps, dtype=bool)
        events = []
        for p in range(k_steps):
            for b in range(blocks):
                flag, layer = (0 if b % 2 == 0 else -1), b // 2      # engine block 2i spatial, 2i+1 temporal
                types = record["types"][(p, flag, layer)]
                for m, name in enumerate(modules):
                    kind = types[name]
                    if kind == "full":
                        actions[p, b, m], tokens[p, b, m] = rf.FULL, n_tok
                    elif kind == "aggressive":
                        actions[p, b, m] = rf.SKIP
                    elif name != "mlp":
                        actions[p, b, m] = rf.REUSE
                    else:
                        idx = record["index"][(p, flag, layer, name)]
                        k = idx.shape[1]
                        tokens[p, b, m] = k
                        if k == n_tok:
                            actions[p, b, m] = rf.FULL
                        elif k:
                            actions[p, b, m] = rf.PARTIAL
                            events.append(idx)
                        else:
                            actions[p, b, m] = rf.REUSE
            trunk[p] = record["types"][(p, -1, geo.depth - 1)]["all_aggressive"]
        arrays[f"{case.name}/latents"] = out.numpy()
        arrays[f"{case.name}/actions"] = actions
        arrays[f"{case.name}/tokens"] = tokens
        arrays[f"{case.name}/trunk_reused"] = trunk
        arrays[f"{case.name}/indices"] = rf.pack_indices(events)
        cases.append(dict(name=case.name, method=case.method, rule=case.rule, partial_events=len(events)))
        print(f"opensora {case.name}: {len(events)} partial events, |latents| max {float(out.abs().max()):.4f}")
    meta = dict(model="opensora", reference_commit=_reference_commit(root), geometry=rf.geometry_dict(geo),
                weights_seed=rf.OPENSORA_SEED, weights_checksum=rf.checksum(state), noise_seed=rf.OPENSORA_NOISE_SEED,
                cfg_scale=rf.OPENSORA_CFG, steps=rf.OPENSORA_STEPS, cache=rf.OPENSORA_CACHE,
                sampler="RFlow Euler, base grid (no timestep transform)", rope_freqs_max_abs_diff=rope_diff,
                cases=cases, torch=torch.__version__,
                index_layout="per partial event in (step, engine block = 2 layer + temporal, module) order: rows "
                             "0..2B-1 ([cond, null]), k sorted indices each (tokens in (t, s) order), int16")
    rf.save_fixture("opensora", meta, arrays)


# ------------------------------------------------------------------------------------------------ main

RUNNERS = {"dit": run_dit, "pixart": run_pixart, "opensora": run_opensora}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--reference", type=Path, required=True, help="root of a local DuCa checkout")
    parser.add_argument("--model", choices=(*MODELS, "all"), default="all",
                        help="the reference fork whose fixture is regenerated (all: each in its own subprocess)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    root = args.reference.resolve()
    if not root.is_dir():
        raise SystemExit(f"--reference {root} is not a folder; clone https://github.com/Shenyi-Z/DuCa there")
    torch.set_num_threads(1)
    if args.model == "all":
        for name in RUNNERS:
            subprocess.run([sys.executable, "-m", "duca_scripts.make_reference_fixtures", "--reference", str(root),
                            "--model", name], check=True)
        return
    if args.model not in RUNNERS:
        raise SystemExit(f"--model {args.model}: no generator yet; available: {', '.join(RUNNERS)}")
    RUNNERS[args.model](root)


if __name__ == "__main__":
    main()
