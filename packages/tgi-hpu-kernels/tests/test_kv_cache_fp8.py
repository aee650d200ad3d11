"""``--kv-cache-dtype fp8_e4m3fn`` / ``fp8_e5m2``: FP8 blocks (unit scale), a quarter of a
float32 pool's bytes, values saturated at the format's range, and logits that stay those
of the model (every read widened to its dtype)."""

from __future__ import annotations

import pytest
import torch

from tgi_hpu_kernels.kv_cache import KVCache
from tgi_hpu_kernels.testing import TokenScore, teacher_forced_logits

SEQUENCES = [[(7 * i + 5 * s + 2) % 128 for i in range(20)] for s in range(3)]


def _cache(storage: torch.dtype | None) -> KVCache:
    return KVCache(
        num_layers=1,
        num_blocks=2,
        block_size=4,
        num_kv_heads=1,
        head_dim=4,
        dtype=torch.float32,
        device=torch.device("cpu"),
        storage_dtype=storage,
    )


def test_fp8_blocks_saturate_and_read_back_in_the_model_dtype():
    cache = _cache(torch.float8_e4m3fn)
    assert cache.keys[0].dtype == torch.float8_e4m3fn and cache.is_narrowed
    key = torch.tensor([[[1000.0, -1000.0, 0.3, 1.0]]])
    cache.write(0, key, -key, torch.tensor([1]))
    rows = torch.tensor([1])
    keys, values = cache.gather(0, rows, batch_size=1, k_len=1)
    assert keys.dtype == torch.float32
    # past the range: the format's largest value, not NaN; inside it: its nearest value
    assert keys.flatten().tolist() == [448.0, -448.0, 0.3125, 1.0]
    assert values.flatten().tolist() == [-448.0, 448.0, -0.3125, -1.0]
    assert not _cache(None).is_narrowed


@pytest.mark.parametrize("kv_cache_dtype", ["fp8_e4m3fn", "fp8_e5m2"])
def test_a_runner_on_fp8_blocks_keeps_the_model_s_answers(
    tiny_checkpoint, make_runner, kv_cache_dtype
):
    folder, model = tiny_checkpoint("llama")
    dense = make_runner(folder)
    fp8 = make_runner(folder, kv_cache_dtype=kv_cache_dtype)
    assert str(fp8.kv_cache_dtype) == f"torch.float8_{kv_cache_dtype.removeprefix('fp8_')}"
    assert fp8.kv_cache_bytes * 4 == dense.kv_cache_bytes  # same blocks, a quarter of float32
    with torch.no_grad():
        reference = model(torch.tensor(SEQUENCES)).logits[:, :-1].float()
    ours = teacher_forced_logits(fp8, SEQUENCES, prefill_len=6, block_size=4)
    score = TokenScore()
    score.add(reference.flatten(0, 1), ours.flatten(0, 1))
    # prefill attends to its own fresh K/V; decode reads FP8 blocks: close, not equal
    assert score.top1 >= 0.95 and score.mean_kl < 1e-3, (score.top1, score.mean_kl)
    assert not torch.equal(ours, teacher_forced_logits(dense, SEQUENCES, 6, 4))
