"""Device selection and the attention kernels every backend offers; device-only checks are
marked ``cuda``/``hpu`` and skipped where the device is absent."""

from __future__ import annotations

import math

import pytest
import torch

from tgi_core.contract import (
    DecodeItem,
    DecodeShape,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    StepPlan,
)
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device import select_device
from tgi_hpu_kernels.device.base import (
    decode_attention_bmm,
    prefill_attention_bmm,
    sdpa_attention,
)
from tgi_hpu_kernels.device.cpu import CpuDevice
from tgi_hpu_kernels.device.hpu import hpu_available
from tgi_hpu_kernels.runner import TorchModelRunner


def test_cpu_backend_is_chosen_here():
    device = select_device("auto") if not torch.cuda.is_available() else select_device("cpu")
    assert isinstance(device, CpuDevice)
    assert (device.prepare_collectives(), device.needs_static_shapes) == ("gloo", False)
    info = device.memory_info()
    assert 0 < info.free_bytes <= info.total_bytes


def test_unknown_or_absent_devices_are_refused():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        select_device("tpu")
    if not hpu_available():
        with pytest.raises(ValueError, match="no Gaudi"):
            select_device("hpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            select_device("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_matmul_attention_equals_sdpa(dtype):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(3, 6, 1, 16, generator=gen).to(dtype)
    k = torch.randn(3, 2, 20, 16, generator=gen).to(dtype)
    v = torch.randn(3, 2, 20, 16, generator=gen).to(dtype)
    mask = (torch.arange(20)[None, :] <= torch.tensor([4, 19, 0])[:, None])[:, None, None, :]
    ours = decode_attention_bmm(q, k, v, mask, 0.25)
    expected = sdpa_attention(q.float(), k.float(), v.float(), mask, 0.25)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(ours.float(), expected, atol=tolerance, rtol=0)
    assert not math.isnan(float(ours.float().sum()))


@pytest.mark.parametrize("causal", [True, False])
def test_prefill_matmul_attention_equals_sdpa(causal):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 6, 5, 16, generator=gen)
    k = torch.randn(2, 2, 5 if causal else 9, 16, generator=gen)
    v = torch.randn(k.shape, generator=gen)
    mask = None
    if not causal:  # queries at positions 4..8 over 9 keys, second row padded after 2 queries
        positions = torch.tensor([[4, 5, 6, 7, 8], [4, 5, 0, 0, 0]])
        mask = (torch.arange(9)[None, None, :] <= positions[:, :, None])[:, None]
    ours = prefill_attention_bmm(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, 0.25)
    expected = sdpa_attention(q, k, v, mask, 0.25)
    torch.testing.assert_close(ours.float(), expected, atol=3e-2, rtol=0)
    exact = prefill_attention_bmm(q, k, v, mask, 0.25)
    torch.testing.assert_close(exact, expected, atol=1e-5, rtol=0)


def test_soft_capped_matmul_attention_equals_the_eager_formula() -> None:
    """transformers' Gemma 2 eager attention: scale, cap as ``cap * tanh(s / cap)``, mask,
    softmax; for several queries and for one."""
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 6, 5, 16, generator=gen)
    k = torch.randn(2, 2, 9, 16, generator=gen)
    v = torch.randn(k.shape, generator=gen)
    positions = torch.tensor([[4, 5, 6, 7, 8], [2, 3, 4, 5, 6]])
    mask = (torch.arange(9)[None, None, :] <= positions[:, :, None])[:, None]  # [2, 1, 5, 9]
    scores = q @ k.repeat_interleave(3, dim=1).transpose(-1, -2) * 0.5
    scores = (1.5 * torch.tanh(scores / 1.5)).masked_fill(~mask, -math.inf)
    expected = torch.softmax(scores, dim=-1) @ v.repeat_interleave(3, dim=1)
    ours = prefill_attention_bmm(q, k, v, mask, 0.5, softcap=1.5)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    one = decode_attention_bmm(q[:, :, :1], k, v, mask[:, :, :1], 0.5, softcap=1.5)
    torch.testing.assert_close(one, expected[:, :, :1], atol=1e-5, rtol=0)
    uncapped = prefill_attention_bmm(q, k, v, mask, 0.5)
    assert (uncapped - expected).abs().max() > 1e-2


def _logits_on(device_name: str, folder: object) -> torch.Tensor:
    """A prefill, then three decodes of one bucket (captured once, replayed twice on CUDA)."""
    settings = RunnerSettings(
        model_id=str(folder),
        dtype="float32",
        device=device_name,
        block_size=4,
        max_total_tokens=64,
    )
    runner = TorchModelRunner(settings, num_kv_blocks=16)
    tokens = (5, 6, 7, 8, 9, 10, 11, 12)
    table = (3, 1, 2)
    item = PrefillItem(
        request_id=0,
        token_ids=tokens[:5],
        num_prompt_tokens=5,
        num_cached_tokens=0,
        block_table=table,
        sampling=SamplingParams(),
    )
    logits = [runner.compute_logits(StepPlan(step_id=0, shape=PrefillShape(2, 8), prefill=(item,)))]
    for position in (5, 6, 7):
        step = DecodeItem(
            request_id=0, token_id=tokens[position], position=position, block_table=table
        )
        plan = StepPlan(step_id=position, shape=DecodeShape(2, 4), decode=(step,))
        logits.append(runner.compute_logits(plan))
    return torch.cat(logits).cpu()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tiny_checkpoint):
    folder, _ = tiny_checkpoint("llama")
    torch.testing.assert_close(
        _logits_on("cuda", folder), _logits_on("cpu", folder), atol=1e-3, rtol=0
    )


@pytest.mark.hpu
@pytest.mark.skipif(not hpu_available(), reason="needs a Gaudi device")
def test_hpu_matches_cpu(tiny_checkpoint):
    folder, _ = tiny_checkpoint("llama")
    torch.testing.assert_close(
        _logits_on("hpu", folder), _logits_on("cpu", folder), atol=1e-2, rtol=0
    )
