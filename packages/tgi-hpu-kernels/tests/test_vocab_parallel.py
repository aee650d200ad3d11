"""Vocab-parallel embedding and LM head: each rank holds ``ceil(vocab / N)`` rows (the last
padded with zeros), and 2 shards of a tiny tied Llama whose vocabulary (127) does not split
evenly give the single runner's logits (127 wide: no padding column), prompt logprobs and
greedy tokens. The other families' 2-shard runs are test_parallel.py's."""

from __future__ import annotations

import msgspec
import pytest
import torch

from tgi_hpu_kernels.models.config import parse_common
from tgi_hpu_kernels.parallel import shard_config, shard_weights
from tgi_hpu_kernels.testing import prefill_plan, save_tiny_checkpoint, teacher_forced_logits

BLOCK_SIZE = 4
VOCAB = 127  # odd: rank 1's block ends with a zero padding row


@pytest.mark.parametrize(("vocab", "num_shard"), [(128, 2), (127, 2), (10, 4)])
def test_each_rank_loads_its_block_of_the_vocabulary(vocab, num_shard):
    block = -(-vocab // num_shard)
    full = {
        "model.embed_tokens.weight": torch.randn(vocab, 8),
        "lm_head.weight": torch.randn(vocab, 8),
        "model.wpe.weight": torch.randn(16, 8),  # learned positions: not vocabulary rows
        "model.norm.weight": torch.randn(8),
    }
    ranks = [
        dict(shard_weights(full.items(), rank=r, num_shard=num_shard, num_kv_heads=num_shard))
        for r in range(num_shard)
    ]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert [rank[name].shape for rank in ranks] == [(block, 8)] * num_shard
        rows = torch.cat([rank[name] for rank in ranks])
        torch.testing.assert_close(rows[:vocab], full[name], rtol=0, atol=0)
        assert not rows[vocab:].any()  # the padding rows are zeros
    for name in ("model.wpe.weight", "model.norm.weight"):
        assert all(rank[name] is full[name] for rank in ranks)
    raw = {
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    }
    assert shard_config(parse_common(raw), num_shard).vocab_size == block  # the model's rows


def _with_prompt_logprobs(plan):
    items = tuple(msgspec.structs.replace(i, prompt_logprobs=True) for i in plan.prefill)
    return msgspec.structs.replace(plan, prefill=items)


@pytest.mark.slow
def test_two_shards_of_an_odd_tied_vocabulary_match_one(tmp_path, make_runner, sharded_runner):
    save_tiny_checkpoint(tmp_path, "llama", vocab_size=VOCAB)  # tied embeddings
    sequences = [[(5 * i + 17 * s) % VOCAB for i in range(10)] + [VOCAB - 1] for s in range(2)]
    prompts = [[VOCAB - 1, 3, 64, 63, 126, 0, 9], [64, 65, 1]]  # ids on both sides of 64
    plan = _with_prompt_logprobs(
        prefill_plan(prompts, blocks_per_sequence=4, batch_size=2, seq_len=8)
    )
    single = make_runner(tmp_path, block_size=BLOCK_SIZE)
    expected = teacher_forced_logits(single, sequences, 6, BLOCK_SIZE)
    expected_out = single.execute(plan).outputs
    with sharded_runner(tmp_path, block_size=BLOCK_SIZE) as (sharded, _):
        model = sharded._model
        assert model.model.embed_tokens.weight.shape == (64, 64)  # ceil(127 / 2) rows
        assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
        assert sharded.vocab_size == VOCAB
        ours = teacher_forced_logits(sharded, sequences, 6, BLOCK_SIZE)
        out = sharded.execute(plan).outputs
    assert ours.shape[-1] == VOCAB
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    assert [o.token_id for o in out] == [o.token_id for o in expected_out]
    for o, e in zip(out, expected_out, strict=True):
        assert o.prompt_logprobs is not None and e.prompt_logprobs is not None
        assert o.prompt_logprobs[0] is None
        torch.testing.assert_close(
            torch.tensor(o.prompt_logprobs[1:]),
            torch.tensor(e.prompt_logprobs[1:]),
            atol=1e-4,
            rtol=0,
        )
