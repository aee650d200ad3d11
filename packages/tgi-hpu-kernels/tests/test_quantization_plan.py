"""Which layers load quantized: ``--quantize`` values and a GGUF's stored tensor types."""

from __future__ import annotations

import pytest

from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.layers import WeightQuantization
from tgi_hpu_kernels.loader.quantize import WEIGHT_ONLY, gguf_plan, plan_quantization
from tgi_hpu_kernels.quantization import check_quantize

INT4, INT8 = WeightQuantization(4, 32), WeightQuantization(8, 32)


def _gguf(projections: dict[str, str], head: str = "Q8_0") -> dict[str, str]:
    types = {f"blk.0.{name}.weight": kind for name, kind in projections.items()}
    return {**types, "blk.0.attn_norm.weight": "F32", "token_embd.weight": head}


def test_a_uniform_four_bit_file_is_int4_with_its_head_as_stored() -> None:
    plan = gguf_plan(_gguf({"attn_q": "Q4_1", "ffn_down": "Q4_1"}))
    assert plan is not None and (plan.linears, plan.head) == (INT4, INT8)
    assert plan.describe() == (
        "int4 (group 32) projections, int8 (group 32) LM head (GGUF Q4_1 projections, Q8_0 head)"
    )


def test_f32_projection_biases_leave_the_matrices_quantized() -> None:
    types = {**_gguf({"attn_q": "Q4_1", "ffn_down": "Q4_1"}), "blk.0.attn_q.bias": "F32"}
    plan = gguf_plan(types)
    assert plan is not None and (plan.linears, plan.head) == (INT4, INT8)


def test_a_mixed_file_keeps_its_widest_tensors_precision() -> None:
    # Q4_K_M: most projections Q4_K, some attn_v / ffn_down Q6_K.
    plan = gguf_plan(_gguf({"attn_q": "Q4_K", "attn_v": "Q6_K", "ffn_down": "Q4_K"}, "Q6_K"))
    assert plan is not None and (plan.linears, plan.head) == (INT8, INT8)


def test_a_dense_projection_keeps_the_projections_dense() -> None:
    plan = gguf_plan(_gguf({"attn_q": "Q4_1", "ffn_down": "F16"}, head="F16"))
    assert plan is None
    plan = gguf_plan(_gguf({"attn_q": "F32"}, head="Q8_0"))
    assert plan is not None and (plan.linears, plan.head) == (None, INT8)


def test_quantize_overrides_the_gguf_and_keeps_the_head_dense() -> None:
    for method, scheme in WEIGHT_ONLY.items():
        plan = plan_quantization(method, _gguf({"attn_q": "Q4_1"}))
        assert plan is not None and (plan.linears, plan.head) == (scheme, None)
        assert plan.origin == f"--quantize {method}"
    assert plan_quantization(None, None) is None  # a dense checkpoint, no --quantize
    with pytest.raises(ValueError, match="not a weight-only method"):
        plan_quantization("fp8", None)


def test_kept_gguf_codes_are_refused_where_no_int_kernels_run() -> None:
    settings = RunnerSettings(gguf_weights="quantized")
    with pytest.raises(
        ValueError, match=r"^--gguf-weights quantized: no weight-only int8/int4 kernels on hpu$"
    ):
        check_quantize(settings, "hpu", quantized_kernels=False)
    check_quantize(settings, "cpu", quantized_kernels=True)
    check_quantize(RunnerSettings(gguf_weights="dense"), "hpu", quantized_kernels=False)
