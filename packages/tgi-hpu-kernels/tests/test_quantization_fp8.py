"""``--quantize fp8`` (``apply_fp8_dynamic``) on a tiny random Llama: INC converts the decoder
projections to FP8 with no measurement run and stays close to the unquantized model; what it
refuses. On the CPU INC runs its quantize-dequantize path (``use_qdq``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from tgi_core.contract import StepPlan
from tgi_hpu_kernels.models.llama import LlamaModel
from tgi_hpu_kernels.quantization import apply_fp8_dynamic
from tgi_hpu_kernels.runner import TorchModelRunner
from tgi_hpu_kernels.testing import prefill_plan

pytest.importorskip("neural_compressor.torch.quantization")

PROMPTS = ([5, 17, 33, 9, 41, 7, 3], [88, 12, 64, 101, 23], [2, 90, 14, 77, 31, 60, 8, 19, 44])
PROJECTIONS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def _plan() -> StepPlan:
    return prefill_plan(PROMPTS, blocks_per_sequence=4, batch_size=4, seq_len=16)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fp8_without_measurement_stays_close_to_the_model(
    tiny_checkpoint: Callable[[str], tuple[Path, nn.Module]],
    make_runner: Callable[..., TorchModelRunner],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dtype: str,
) -> None:
    folder = tiny_checkpoint("llama")[0]
    expected = make_runner(folder, dtype=dtype).compute_logits(_plan())

    monkeypatch.chdir(tmp_path)  # where INC would put statistics (./hqt_output) if it used any
    runner = make_runner(folder, dtype=dtype)
    quantization = apply_fp8_dynamic(runner._model, runner._dtype, use_qdq=True)
    assert quantization.model is runner._model
    assert not list(tmp_path.iterdir())  # no statistics read or written
    # a device's fused decoder stack would read the weights past the patched layers
    llama = runner._model.model
    assert isinstance(llama, LlamaModel) and llama.fuse_layers is False

    modules = dict(runner._model.named_modules())
    for i in range(2):
        for name in PROJECTIONS:
            layer = modules[f"model.layers.{i}.{name}"]
            assert type(layer).__name__ == "PatchedLinear"
            assert layer.weight.dtype == torch.float8_e4m3fn
    assert type(modules["lm_head"]).__name__ == "LMHead"  # the head stays in the model's dtype

    # measured: cosine >= 0.996, max |diff| 0.08-0.10 on logits up to 1.5 (both dtypes)
    logits = runner.compute_logits(_plan())
    assert torch.nn.functional.cosine_similarity(logits, expected).min() > 0.99
    error = (logits - expected).abs().max()  # the FP8 rounding is there, and small
    assert 0 < error < 0.1 * expected.abs().max()
    # a random model's top logits lie close: FP8 may swap the first two, never more
    top2 = expected.topk(2, dim=-1).indices
    assert (top2 == logits.argmax(-1, keepdim=True)).any(-1).all()


def test_fp8_on_the_cpu_needs_quantize_dequantize() -> None:
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError, match=r"^--quantize fp8: .*only QDQ mode is supported on CPU"):
        apply_fp8_dynamic(model, torch.float32, use_qdq=False)
    assert type(model[0]) is nn.Linear  # left as it was


def test_fp8_refuses_a_float64_model() -> None:
    with pytest.raises(ValueError, match=r"^--quantize fp8: FP8 needs a bfloat16, float16 or"):
        apply_fp8_dynamic(nn.Sequential(nn.Linear(8, 8)), torch.float64, use_qdq=True)
