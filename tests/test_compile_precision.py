"""GPU readiness checked on CPU: torch.compile of the cached blocks without graph breaks, and the DiT in bf16.

The compile test uses dynamo's "eager" backend: graph breaks are decided by dynamo's tracing, not by the
backend, and skipping inductor's code generation keeps the test at a few seconds instead of minutes.
"""

from __future__ import annotations

import pytest
import torch

from duca_scripts.benchmark_speed import compile_blocks
from duca_scripts.methods import parse_methods
from duca_scripts.targets import build_target

STEPS = 4          # a full step, a partial (or reused) step and an aggressive step all occur


def _sample(target, method: str):
    target.configure(parse_methods([method])[-1].config)
    with torch.inference_mode():
        return target.sample(target.noise(2, 0), target.labels(2), STEPS)


# value norms (DuCa's selector) and the attention score (ToCa's) are the two statistics the attention
# returns; FORA reuses whole modules, TaylorSeer forecasts them.
@pytest.mark.parametrize("method", ["dit-duca-n3-r95", "dit-toca-n3-r93", "dit-fora-n3", "dit-taylorseer-n3-o3"])
def test_compiled_cached_blocks_have_no_graph_breaks(method):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    target = build_target("tiny", device="cpu")
    eager = _sample(target, method)
    compile_blocks(target.model, backend="eager")
    compiled = _sample(target, method)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["calls_captured"] > 0 and counters["stats"]["unique_graphs"] >= 1
    assert torch.allclose(compiled, eager, atol=1e-5)


def test_dit_runs_in_bf16_with_fp32_latents():
    from dit_duca.precision import resolve_dtype

    target = build_target("tiny", device="cpu")
    fp32 = _sample(target, "dit-duca-n3-r95")
    target.model.to(resolve_dtype("bf16", torch.device("cpu")))
    bf16 = _sample(target, "dit-duca-n3-r95")
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()        # the sampler stays fp32
    assert target.cache.last_peak_bytes > 0
    error = float((bf16 - fp32).abs().max() / fp32.abs().max())
    assert not torch.equal(bf16, fp32) and error < 0.02                      # bf16 rounding, the same samples
    assert all(t.dtype == torch.bfloat16 for t in target.model.parameters())


def test_dtype_flag_values():
    from dit_duca.precision import dtype_name, resolve_dtype
    from duca_common.errors import UsageError

    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32      # the reference DiT's precision
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float32
    assert resolve_dtype("fp16", torch.device("cuda")) == torch.float16 and dtype_name(torch.bfloat16) == "bf16"
    with pytest.raises(UsageError, match="fp16 needs a GPU"):
        resolve_dtype("fp16", torch.device("cpu"))
    with pytest.raises(UsageError, match="is not one of"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_sample_py_refuses_fp16_on_cpu_before_any_work(tmp_path, capsys):
    from dit_duca import sample as sample_cli

    with pytest.raises(SystemExit) as exc:
        sample_cli.main(["--dtype", "fp16", "--device", "cpu", "--out", str(tmp_path / "s.png"), "--no-progress"])
    assert exc.value.code == 2 and "fp16 needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "s.png").exists()
