"""diffusers' own cache hooks as peers (duca_scripts.diffusers_peers) on the tiny DiT: parsing, refusals,
parity of the diffusers copy, FLOPs per computed part, fresh state per run."""

from __future__ import annotations

import ast

import pytest
import torch
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)

from duca_common.cache.accounting import full_run_flops
from duca_scripts import benchmark_speed, diffusers_peers, methods, pareto, reproduce_table
from duca_scripts.methods import DiffusersPeerSettings, MethodSpecError, parse_method
from duca_scripts.peers import PeerError, attach_peer, check_peer_support, prepare_peers
from duca_scripts.targets import build_target

STEPS = 10
IMAGES = 2
# Settings that skip work on the tiny DiT in 10 steps, and settings that never skip.
SKIPPING = ["diffusers-fbcache:t=1", "diffusers-pab:skip=3,lo=-1,hi=1000", "diffusers-taylorseer:interval=3,warmup=2",
            "diffusers-magcache:t=1,k=3,r=0.2", "diffusers-fastercache:uncond=3"]
NEVER = ["diffusers-fbcache:t=0", "diffusers-pab:skip=1", "diffusers-taylorseer:interval=1", "diffusers-magcache:k=0",
         "diffusers-fastercache:uncond=1"]
# The diffusers copy computes our forward with separate q/k/v projections; on the tiny model it is bit for bit.
PARITY_ATOL = 1e-6


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)                 # the tiny DiT's initialisation draws from the global generator
    return build_target("tiny")


@pytest.fixture(scope="module")
def inputs(target):
    return target.noise(IMAGES, 0), target.labels(IMAGES)


@pytest.fixture(scope="module")
def reference(target, inputs):
    with torch.inference_mode():
        return target.sample(*inputs, STEPS)


def _run(target, text: str, inputs):
    spec = parse_method(text)
    with torch.inference_mode(), attach_peer(target, spec.peer, STEPS) as run:
        out = target.sample(*inputs, STEPS)
    return out, run


def _speedup(target, run) -> float:
    dims = target.dims(IMAGES)
    return full_run_flops(dims, target.model.depth, STEPS, ("attn", "mlp")) / run.reference_flops(dims)


def test_our_defaults_are_the_installed_diffusers_defaults():
    assert methods.DIFFUSERS_FBC_THRESHOLD == FirstBlockCacheConfig().threshold
    assert methods.DIFFUSERS_PAB_TIMESTEPS == PyramidAttentionBroadcastConfig().spatial_attention_timestep_skip_range
    ts = TaylorSeerCacheConfig()
    assert (methods.DIFFUSERS_TAYLORSEER_INTERVAL, methods.DIFFUSERS_TAYLORSEER_ORDER,
            methods.DIFFUSERS_TAYLORSEER_WARMUP) == (ts.cache_interval, ts.max_order, ts.disable_cache_before_step)
    mc = MagCacheConfig(calibrate=True)
    assert (methods.DIFFUSERS_MAGCACHE_THRESHOLD, methods.DIFFUSERS_MAGCACHE_MAX_SKIP,
            methods.DIFFUSERS_MAGCACHE_RETENTION) == (mc.threshold, mc.max_skip_steps, mc.retention_ratio)
    fc = FasterCacheConfig()
    assert (methods.DIFFUSERS_FASTERCACHE_UNCOND, methods.DIFFUSERS_FASTERCACHE_SKIP) == (
        fc.unconditional_batch_skip_range, fc.spatial_attention_block_skip_range)


def test_method_strings_parse_to_settings():
    fbc = parse_method("diffusers-fbcache:t=0.08")
    assert fbc.is_peer and fbc.family == "diffusers-fbcache" and fbc.peer == DiffusersPeerSettings("fbcache", 0.08)
    assert parse_method("diffusers-fbcache").peer.threshold == methods.DIFFUSERS_FBC_THRESHOLD
    assert parse_method("diffusers-magcache").peer.threshold == methods.DIFFUSERS_MAGCACHE_THRESHOLD
    pab = parse_method("diffusers-pab:skip=4,lo=-1,hi=1000").peer
    assert (pab.kind, pab.skip, pab.lo, pab.hi) == ("pab", 4, -1, 1000)
    ts = parse_method("diffusers-taylorseer:interval=4,o=2,warmup=1").peer
    assert (ts.kind, ts.interval, ts.order, ts.warmup) == ("taylorseer", 4, 2, 1)
    fc = parse_method("diffusers-fastercache:uncond=4,skip=3")
    assert (fc.peer.kind, fc.peer.uncond, fc.peer.skip) == ("fastercache", 4, 3)
    mc = parse_method("diffusers-magcache:t=0.1,k=5,r=0.1")
    assert (mc.peer.threshold, mc.peer.max_skip, mc.peer.retention) == (0.1, 5, 0.1)
    assert mc.setting == "t=0.1, K=5, retention 0.1"
    assert methods.is_peer_family("diffusers-pab") and methods.is_peer_family("cachedit-dmd")
    assert not methods.is_peer_family("taylorseer")


@pytest.mark.parametrize("text, words", [
    ("diffusers-fbcache:t=-0.1", "t=-0.1 must be >= 0"),
    ("diffusers-fbcache:rdt=0.1", "unknown setting 'rdt'; allowed: t"),
    ("diffusers-pab:skip=0", "skip=0 must be >= 1"),
    ("diffusers-pab:lo=800,hi=100", "lo=800 must be below hi=100"),
    ("diffusers-taylorseer:interval=0", "interval=0 must be >= 1"),
    ("diffusers-taylorseer:warmup=0", "warmup=0 must be >= 1"),
    ("diffusers-taylorseer:o=x", "o='x' is not an integer"),
    ("diffusers-magcache:r=1.5", "use 0 <= r <= 1"),
    ("diffusers-magcache:k=-1", "k=-1 must be >= 0"),
    ("diffusers-fastercache:uncond=0", "uncond=0 must be >= 1"),
    ("diffusers-seacache", "unknown method"),
])
def test_bad_settings_name_the_problem(text, words):
    with pytest.raises(MethodSpecError) as exc:
        parse_method(text)
    assert words in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("main", [benchmark_speed.main, reproduce_table.main])
def test_bad_peer_settings_exit_2_in_the_cli_tables(main, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--model", "tiny", "--methods", "diffusers-pab:skip=0", "--steps", "2", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "skip=0 must be >= 1" in capsys.readouterr().err


def test_peers_refuse_pixart_with_the_fix():
    with pytest.raises(PeerError, match="drop the cachedit-/diffusers- methods"):
        check_peer_support("PixArt-XL/2", [DiffusersPeerSettings("pab")])
    check_peer_support("tiny", [DiffusersPeerSettings("pab")])          # diffusers needs no extra


def test_uncached_diffusers_copy_gives_our_latents_and_the_engine_flops(target, inputs, reference):
    twin = diffusers_peers.diffusers_twin(target)
    assert diffusers_peers.diffusers_twin(target) is twin                # converted once per target
    with torch.inference_mode(), diffusers_peers.recording(twin) as run, target.using_model(twin):
        out = target.sample(*inputs, STEPS)
    assert (out - reference).abs().max().item() <= PARITY_ATOL
    assert target.model is not twin and target.engine_sessions          # restored
    assert len(run.evaluations) == STEPS and run.cached_evaluations == 0 and set(run.table()[-STEPS:]) == {"F"}
    # an uncached run costs what the engine charges its uncached plan
    engine_none, _ = pareto.reference_flops_per_image(target, parse_method("none"), STEPS)
    assert run.reference_flops(target.dims(IMAGES)) == IMAGES * engine_none


@pytest.mark.parametrize("text", SKIPPING)
def test_peer_skips_work_and_each_run_starts_fresh(target, inputs, reference, text):
    first, run = _run(target, text, inputs)
    second, run2 = _run(target, text, inputs)
    assert torch.equal(first, second) and run.evaluations == run2.evaluations     # no state leaks between runs
    assert len(run.evaluations) == STEPS and run.cached_evaluations > 0
    assert _speedup(target, run) > 1.0
    assert not torch.equal(first, reference)
    with torch.inference_mode():                                                  # hooks gone: plain copy again
        twin = diffusers_peers.diffusers_twin(target)
        with target.using_model(twin):
            assert torch.equal(target.sample(*inputs, STEPS), reference)


@pytest.mark.parametrize("text", NEVER)
def test_peer_configured_never_to_skip_costs_exactly_the_uncached_run(target, inputs, reference, text):
    out, run = _run(target, text, inputs)
    assert _speedup(target, run) == 1.0 and run.cached_evaluations == 0
    assert (out - reference).abs().max().item() <= PARITY_ATOL


def test_flops_follow_the_parts_that_ran(target, inputs):
    """PAB reuses attention only: its cached evaluations cost adaLN, LayerNorms and MLP; MagCache's skipped
    steps run no block part at all; TaylorSeer's forecast steps run adaLN and the LayerNorms only."""
    _, pab = _run(target, "diffusers-pab:skip=3,lo=-1,hi=1000", inputs)
    assert {p for b, p, n in pab.evaluations[1]} == {"adaln", "norm", "mlp"}
    _, mag = _run(target, "diffusers-magcache:t=1,k=3,r=0.2", inputs)
    assert [] in mag.evaluations and "-" in mag.table()
    _, ts = _run(target, "diffusers-taylorseer:interval=3,warmup=2", inputs)
    assert {p for b, p, n in ts.evaluations[2]} == {"adaln", "norm"}
    _, fc = _run(target, "diffusers-fastercache:uncond=3", inputs)      # the conditional half alone, some steps
    batches = [{n for _, _, n in ev} for ev in fc.evaluations]
    assert {2 * IMAGES} in batches and {IMAGES} in batches


def test_taylorseer_hooks_every_attention_and_mlp(target):
    twin = diffusers_peers.diffusers_twin(target)
    spec = parse_method("diffusers-taylorseer:interval=2")
    with attach_peer(target, spec.peer, STEPS):
        hooked = {name for name, m in twin.transformer.named_modules()
                  if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.hooks}
    depth = target.model.depth
    assert hooked == {f"transformer_blocks.{i}.{m}" for i in range(depth) for m in ("attn1", "ff")}
    assert not any(getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.hooks
                   for m in twin.transformer.modules())                           # disabled on exit


def test_an_exception_inside_a_run_disables_the_hook(target, inputs):
    spec = parse_method("diffusers-fbcache:t=1")
    fresh, _ = _run(target, "diffusers-fbcache:t=1", inputs)
    with pytest.raises(RuntimeError, match="boom"), torch.inference_mode(), attach_peer(target, spec.peer, STEPS):
        target.sample(*inputs, STEPS // 2)
        raise RuntimeError("boom")
    assert torch.equal(_run(target, "diffusers-fbcache:t=1", inputs)[0], fresh)


def test_magcache_calibration_matches_diffusers_calibrate_mode(target, capsys):
    """Our ratios are the numbers diffusers' MagCacheConfig(calibrate=True) prints for the same run."""
    twin = diffusers_peers.diffusers_twin(target)
    ours = diffusers_peers.magcache_ratios(target, twin, STEPS)
    assert len(ours) == STEPS and ours[0] == diffusers_peers.MAGCACHE_FIRST_RATIO
    assert diffusers_peers.magcache_ratios(target, twin, STEPS) is ours               # calibrated once
    noise = target.noise(diffusers_peers.MAGCACHE_CALIBRATION_IMAGES, diffusers_peers.MAGCACHE_CALIBRATION_SEED)
    labels = target.labels(diffusers_peers.MAGCACHE_CALIBRATION_IMAGES)
    capsys.readouterr()
    twin.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=STEPS))
    try:
        with torch.no_grad(), target.using_model(twin):
            target.sample(noise, labels, STEPS)
    finally:
        twin.transformer.disable_cache()
    lists = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[") and line.endswith("]")
             and not line.startswith("[MagCache]")]           # the printed list follows a "[MagCache] ..." line
    theirs = ast.literal_eval(lists[-1])
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_prepare_calibrates_before_timing(target):
    twin = diffusers_peers.diffusers_twin(target)
    twin.magcache_ratios.pop(STEPS + 1, None)
    prepare_peers(target, [parse_method("diffusers-magcache").peer, parse_method("diffusers-pab").peer], STEPS + 1)
    assert len(twin.magcache_ratios[STEPS + 1]) == STEPS + 1


def test_peers_need_a_dit_model():
    with pytest.raises(PeerError, match="diffusers peers run on our DiT"):
        diffusers_peers.DiffusersDiT(torch.nn.Linear(2, 2))
