"""Plans reproduce, step by step, the schedules printed in shared/reference/models.md."""

import pytest

from duca_common.cache import Action, BlockLayout, CacheConfig, RatioSchedule, build_plan, get_preset
from duca_common.cache.config import DIT_TOCA_SCHEDULE, PIXART_TOCA_SCHEDULE

DIT_LAYOUT = BlockLayout(depth=28, step_counts_down=True)
PIXART_LAYOUT = BlockLayout(depth=28, modules=("attn", "cross_attn", "mlp"), tokenwise=("cross_attn", "mlp"),
                            self_attn="attn", cross_attn="cross_attn")
# OpenSora: spatial and temporal blocks interleaved, 28 of each
OPENSORA_LAYOUT = BlockLayout(depth=56, modules=("attn", "cross_attn", "mlp"), tokenwise=("mlp",),
                              self_attn="attn", cross_attn="cross_attn")

# models.md A.7: 50 DDIM steps, threshold 3, fresh_ratio > 0 (reference step numbering, counting down)
DIT_SCHEDULE = """
49 F | 48 T | 47 A | 46 T | 45 F→T | 44 F | 43 T | 42 A | 41 T | 40 F | 39 T | 38 A | 37 T | 36 F | 35 T | 34 A | 33 T
32 F→A | 31 T | 30 F | 29 A | 28 T | 27 F | 26 A | 25 T | 24 F | 23 A | 22 T | 21 F | 20 A | 19 T
18 F | 17 T | 16 F | 15 T | 14 F | 13 T | 12 F | 11 T | 10 F | 9 T | 8 F | 7 T | 6 F | 5 T | 4 F | 3 T | 2 F | 1 T | 0 F
"""
# models.md B.9: 20 steps, threshold 3
PIXART_SCHEDULE = ("0 F, 1 T, 2 A, 3 F, 4 T, 5 A, 6 F, 7 T, 8 A, 9 F, 10 T, 11 A, 12 F, 13 T, 14 A, 15 F, 16 T, "
                   "17 A, 18 F, 19 T")
# models.md C.11: 30 steps (attn / cross / mlp; A = all aggressive)
OPENSORA_SCHEDULE = """
0 F/F/F  1 F/F/F  2 F/F/F  3 F/T/F  4 T/T/T  5 A   6 F/F/F  7 T/T/T  8 A   9 F/T/F 10 T/T/T 11 A
12 F/F/F 13 T/T/T 14 A  15 F/T/F 16 T/T/T 17 A  18 F/F/F 19 T/T/T 20 A  21 F/T/F 22 T/T/T 23 A
24 F/F/F 25 T/T/T 26 A  27 F/T/F 28 T/T/T 29 A
"""


def _parse(text: str, sep: str) -> dict[int, str]:
    items = [t.strip() for t in text.replace("\n", sep).split(sep) if t.strip()]
    return {int(i.split()[0]): i.split()[1] for i in items}


def test_dit_reference_schedule_50_steps():
    plan = build_plan(get_preset("dit-duca-readme").config, DIT_LAYOUT, 50)
    expected = _parse(DIT_SCHEDULE, "|")
    got = {DIT_LAYOUT.reference_step(p, 50): plan.step_summary(p) for p in range(50)}
    assert got == expected
    # "F→A": block 0 full, blocks 1..27 aggressive, trunk reused
    p32 = 49 - 32
    assert plan.actions[p32][0] == (Action.FULL, Action.FULL)
    assert all(a == (Action.SKIP, Action.SKIP) for a in plan.actions[p32][1:])
    assert plan.trunk_reused[p32] and not plan.trunk_reused[49 - 45]


def test_dit_per_step_mode_shares_one_type_per_step():
    cfg = get_preset("dit-duca-readme").config.replace(plan_mode="per_step")
    plan = build_plan(cfg, DIT_LAYOUT, 50)
    for p in range(50):
        assert len(set(plan.block_types[p])) == 1, p
    # step 45 is a full step in per-step mode (block 0's decision applies to every block)
    assert plan.step_summary(49 - 45) == "F"


def test_dit_conservative_mlp_ratio_follows_reference_schedule():
    plan = build_plan(get_preset("dit-duca-readme").config, DIT_LAYOUT, 50)
    p = 49 - 19                                              # reference step 19, a 'T' step
    r = 0.05 * (0.8 + 0.4 * 5 / 27) * (3 - 4 * 19 / 50) * 2.5
    assert plan.ratios[p][5][1] == pytest.approx(r)
    assert plan.actions[p][5] == (Action.REUSE, Action.PARTIAL)
    # step >= 0.75 K: the ratio clamps to 0: a partial step of ratio 0 (no token recomputed, the counters age)
    assert plan.actions[49 - 48][3] == (Action.REUSE, Action.PARTIAL) and plan.ratios[49 - 48][3][1] == 0.0


def test_pixart_schedule_20_steps():
    plan = build_plan(get_preset("pixart-duca-r25").config, PIXART_LAYOUT, 20)
    assert {p: plan.step_summary(p) for p in range(20)} == _parse(PIXART_SCHEDULE, ",")
    p, block = 13, 27                                        # a 'T' step, late enough that r < 1
    assert plan.actions[p][block] == (Action.REUSE, Action.PARTIAL, Action.PARTIAL)
    assert plan.actions[4][10] == (Action.REUSE, Action.PARTIAL, Action.FULL)   # MLP r clamps to 1: all tokens
    layer_w, step_w = 1.6 - 1.2 * block / 27, 1.9 - 1.8 * p / 20
    assert plan.ratios[p][block][1] == pytest.approx(min(0.75 * layer_w * step_w * 0.6, 1.0))
    assert plan.ratios[p][block][2] == pytest.approx(min(0.75 * layer_w * step_w * 1.6, 1.0))


def test_opensora_schedule_30_steps():
    plan = build_plan(get_preset("opensora-duca").config, OPENSORA_LAYOUT, 30)
    kind = {Action.FULL: "F", Action.SKIP: "A", Action.REUSE: "T", Action.PARTIAL: "T"}
    expected = {int(k): v for k, v in (pair.split() for pair in _pairs(OPENSORA_SCHEDULE))}
    for p in range(30):
        if plan.trunk_reused[p]:
            got = "A"
        else:
            got = "/".join(kind[a] for a in plan.actions[p][0])
        assert got == expected[p], p
    # conservative steps: attention and cross-attention reused, MLP partial at 0.1 * 1.495
    assert plan.actions[4][7] == (Action.REUSE, Action.REUSE, Action.PARTIAL)
    assert plan.ratios[4][7][2] == pytest.approx(0.1495)


def _pairs(text: str) -> list[str]:
    tokens = text.split()
    return [f"{tokens[i]} {tokens[i + 1]}" for i in range(0, len(tokens), 2)]


@pytest.mark.parametrize("method,letter", [("fora", "R"), ("taylorseer", "P")])
def test_fixed_interval_methods(method, letter):
    plan = build_plan(CacheConfig(method=method, interval=3), DIT_LAYOUT, 50)
    full = [DIT_LAYOUT.reference_step(p, 50) for p in range(50) if plan.step_summary(p) == "F"]
    assert full == [49] + [s for s in range(48, -1, -1) if s % 3 == 0]    # 18 full steps: 50/18 = 2.78x
    assert {plan.step_summary(p) for p in range(50)} == {"F", letter}


@pytest.mark.parametrize("rule", ["fixed", "dit"])
def test_warmup_full_steps_apply_under_every_interval_rule(rule):
    """The first ``warmup_full_steps`` evaluations are full under the fixed and DiT rules too (not only with
    module cycles, where OpenSora's preset uses it); the cycle continues after them."""
    base = CacheConfig(method="taylorseer", interval=4, interval_rule=rule)
    plain, warm = build_plan(base, DIT_LAYOUT, 20), build_plan(base.replace(warmup_full_steps=3), DIT_LAYOUT, 20)
    assert [warm.step_summary(p) for p in range(3)] == ["F", "F", "F"]
    assert [plain.step_summary(p) for p in range(3)] != ["F", "F", "F"]            # the warm-up changes something
    assert warm.count(Action.FULL) > plain.count(Action.FULL)
    if rule == "fixed":                  # after the warm-up the fixed cycle is the one without it
        assert [warm.step_summary(p) for p in range(3, 20)] == [plain.step_summary(p) for p in range(3, 20)]


def test_none_and_cycle_length_one_are_all_full():
    for cfg in (CacheConfig(), CacheConfig(method="duca", interval=1), CacheConfig(method="toca", interval=1)):
        plan = build_plan(cfg, DIT_LAYOUT, 12)
        assert plan.count(Action.FULL) == 12 * 28 * 2


def test_ratio_schedule_is_parameterised_by_depth_and_steps():
    # the reference's layer/27 generalises to layer/(depth-1); the step factor to step/K
    assert DIT_TOCA_SCHEDULE.ratio(0.05, 10, 20, layer=11, depth=12, module="mlp") == pytest.approx(
        0.05 * (0.8 + 0.4) * (3 - 4 * 10 / 20) * 2.5)
    assert PIXART_TOCA_SCHEDULE.ratio(1.0, 0, 20, 0, 28, "mlp") == 1.0          # clamped
    assert RatioSchedule().ratio(0.3, 5, 7, 1, 4, "mlp") == 0.3


def test_plan_table_prints_reference_numbering():
    table = build_plan(get_preset("dit-duca-readme").config, DIT_LAYOUT, 50).table().splitlines()
    assert table[0].split() == ["49", "F"] and table[4].split() == ["45", "F→T"] and len(table) == 50


def test_toca_on_module_cycles_never_skips():
    cfg = get_preset("opensora-duca").config.replace(method="toca")
    plan = build_plan(cfg, OPENSORA_LAYOUT, 30)
    assert plan.count(Action.SKIP) == 0 and not any(plan.trunk_reused)
    duca = build_plan(get_preset("opensora-duca").config, OPENSORA_LAYOUT, 30)
    # the full steps are the same; the aggressive steps of DuCa become conservative
    assert [a[0][0] == Action.FULL for a in plan.actions] == [a[0][0] == Action.FULL for a in duca.actions]
    assert plan.actions[5][0] == (Action.REUSE, Action.REUSE, Action.PARTIAL)
