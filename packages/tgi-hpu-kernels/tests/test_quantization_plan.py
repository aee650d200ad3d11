"""Which layers load quantized: ``--quantize`` values and a GGUF's stored tensor types."""

from __future__ import annotations

import pytest

from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.layers import QuantizedKernels, WeightQuantization
from tgi_hpu_kernels.loader.prequantized import PREQUANTIZED_METHODS
from tgi_hpu_kernels.loader.quantize import WEIGHT_ONLY, fit_plan, gguf_plan, plan_quantization
from tgi_hpu_kernels.quantization import check_quantize

INT4, INT8 = WeightQuantization(4, 32), WeightQuantization(8, 32)
CPU = QuantizedKernels("cpu", frozenset((4, 8)))
HPU = QuantizedKernels("hpu", frozenset((4,)), integer_zero_points=True)
CUDA = QuantizedKernels("cuda")


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
        ValueError, match=r"^--gguf-weights quantized: no weight-only int8/int4 kernels on cuda$"
    ):
        check_quantize(settings, CUDA)
    check_quantize(settings, CPU)
    check_quantize(settings, HPU)
    check_quantize(RunnerSettings(gguf_weights="dense"), CUDA)


def test_each_weight_only_method_runs_where_a_kernel_of_its_width_does() -> None:
    # Gaudi's convert_from_uint4 is int4: the int8 methods are refused there, in one line
    int4 = ("bitsandbytes-nf4", "bitsandbytes-fp4", *PREQUANTIZED_METHODS)
    for method in (*WEIGHT_ONLY, *PREQUANTIZED_METHODS):
        settings = RunnerSettings(quantize=method)
        check_quantize(settings, CPU)
        if method in int4:
            check_quantize(settings, HPU)
        else:
            with pytest.raises(
                ValueError, match=rf"^--quantize {method}: no weight-only int8 kernels on hpu$"
            ):
                check_quantize(settings, HPU)
        bits = 4 if method in int4 else 8
        with pytest.raises(
            ValueError, match=rf"^--quantize {method}: no weight-only int{bits} kernels on cuda$"
        ):
            check_quantize(settings, CUDA)


def test_gaudi_plans_int4_with_integer_zero_points_and_no_int8() -> None:
    plan = plan_quantization("bitsandbytes-nf4", None)
    assert plan is not None
    fitted = fit_plan(plan, HPU)
    assert fitted.linears == WeightQuantization(4, 64, integer_zeros=True)
    assert fitted.describe() == (
        "int4 (group 64, integer zero points) projections, dense LM head "
        "(--quantize bitsandbytes-nf4)"
    )
    assert fit_plan(plan, CPU) == plan  # the CPU's kernels take Q4_1's float mins
    # a Q4_1 file keeps int4 projections; its int8 head has no Gaudi kernel and stays dense
    q4_1 = gguf_plan(_gguf({"attn_q": "Q4_1"}, head="Q8_0"))
    assert q4_1 is not None
    gaudi = fit_plan(q4_1, HPU)
    assert (gaudi.linears, gaudi.head) == (WeightQuantization(4, 32, integer_zeros=True), None)
    q8_0 = gguf_plan(_gguf({"attn_q": "Q8_0"}))
    assert q8_0 is not None
    with pytest.raises(
        ValueError,
        match=r"^GGUF Q8_0 projections, Q8_0 head: no weight-only int8 kernels on hpu$",
    ):
        fit_plan(q8_0, HPU)
