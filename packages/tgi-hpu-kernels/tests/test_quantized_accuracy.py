"""Quantized weights on the real model: SmolLM2 (the embedded Q4_1 GGUF) in int8 and int4
stays close to our dense bf16.

A fixed 512-token text, teacher-forced (480 tokens prefilled, so the dequantize-then-GEMM
path runs, then 31 decoded one at a time through the native quantized kernel). The
reference is the GGUF dequantized to dense bf16. Against it, per position: the share of
top-1 tokens that agree, and each model's perplexity of the text. int8 is ``--quantize
bitsandbytes`` (per-channel int8 of the dequantized weights); int4 is the GGUF kept as
stored (Q4_1 blocks as int4 group 32, the Q8_0 head as int8 group 32).
"""

from __future__ import annotations

import pytest
import torch

from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device.cpu import CpuDevice
from tgi_hpu_kernels.layers import QuantizedLinear, WeightQuantization
from tgi_hpu_kernels.loader import EMBEDDED_MODEL_FILE, embedded_model_path
from tgi_hpu_kernels.runner import TorchModelRunner
from tgi_hpu_kernels.testing import TokenScore, english_text, teacher_forced_logits

pytestmark = pytest.mark.slow

TOKENS, PREFILL, BLOCK_SIZE = 512, 480, 16


def _runner(quantize: str | None, *, gguf_weights: str) -> TorchModelRunner:
    """``gguf_weights``: the GGUF dense or kept quantized, whatever this CPU prefers."""
    settings = RunnerSettings(
        dtype="bfloat16",
        device="cpu",
        block_size=BLOCK_SIZE,
        max_total_tokens=TOKENS + 1,
        quantize=quantize,
        gguf_weights=gguf_weights,
        warmup_enabled=False,
    )
    return TorchModelRunner(settings, device=CpuDevice(), num_kv_blocks=TOKENS // BLOCK_SIZE + 2)


@pytest.fixture(scope="module")
def text_and_reference() -> tuple[list[int], torch.Tensor]:
    transformers = pytest.importorskip("transformers")
    folder = str(embedded_model_path().parent)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=EMBEDDED_MODEL_FILE)
    ids = tokenizer(english_text(80))["input_ids"][:TOKENS]
    assert len(ids) == TOKENS
    dense = _runner(None, gguf_weights="dense")
    assert dense.weights == "dense"
    return ids, teacher_forced_logits(dense, [ids], PREFILL, BLOCK_SIZE)[0]


def _score(
    runner: TorchModelRunner, ids: list[int], reference: torch.Tensor
) -> tuple[TokenScore, TokenScore]:
    targets = torch.tensor(ids[1:])
    ours, base = TokenScore(), TokenScore()
    ours.add(reference, teacher_forced_logits(runner, [ids], PREFILL, BLOCK_SIZE)[0], targets)
    base.add(reference, reference, targets)
    return ours, base


def _schemes(runner: TorchModelRunner) -> set[str]:
    model = runner._model  # which layers the load swapped
    return {str(m.scheme) for m in model.modules() if isinstance(m, QuantizedLinear)}


def test_int8_agrees_with_bf16(text_and_reference: tuple[list[int], torch.Tensor]) -> None:
    ids, reference = text_and_reference
    runner = _runner("bitsandbytes", gguf_weights="auto")
    assert _schemes(runner) == {str(WeightQuantization(8))}  # the LM head stays dense
    ours, base = _score(runner, ids, reference)
    report = f"top-1 {ours.top1:.4f}, perplexity {ours.perplexity:.3f} vs {base.perplexity:.3f}"
    assert ours.top1 >= 0.97, report
    assert abs(ours.perplexity / base.perplexity - 1) <= 0.02, report
    assert ours.mean_kl > 0, report  # quantizing did change the logits


def test_int4_gguf_as_stored_agrees_with_bf16(
    text_and_reference: tuple[list[int], torch.Tensor],
) -> None:
    ids, reference = text_and_reference
    runner = _runner(None, gguf_weights="quantized")
    assert _schemes(runner) == {str(WeightQuantization(4, 32)), str(WeightQuantization(8, 32))}
    ours, base = _score(runner, ids, reference)
    report = f"top-1 {ours.top1:.4f}, perplexity {ours.perplexity:.3f} vs {base.perplexity:.3f}"
    assert ours.top1 >= 0.90, report
    assert abs(ours.perplexity / base.perplexity - 1) <= 0.08, report
