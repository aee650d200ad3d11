"""Medusa heads (a Medusa model id, TGI's layout): the base model is served, the heads'
guesses become the next step's drafts, and the answers stay those of plain decoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tgi_core.contract import GenerationRequest, SamplingParams, TokenEvent
from tgi_core.settings.slices import SchedulerSettings
from tgi_hpu_kernels.testing import prefill_plan
from tgi_scheduler import Engine
from tgi_scheduler.testing import run_until_idle

HIDDEN, VOCAB = 64, 128  # the tiny configs'
PROMPTS = {1: (5, 6, 7, 8, 9, 5, 6, 7), 2: (40, 41, 40, 41, 40)}


def _medusa_folder(root: Path, base: Path, num_heads: int = 3) -> dict[str, torch.Tensor]:
    """Random heads of one residual block each, as ``medusa_lm_head.safetensors`` names them."""
    torch.manual_seed(3)
    weights = {}
    for head in range(num_heads):
        weights[f"{head}.0.linear.weight"] = torch.randn(HIDDEN, HIDDEN) * 0.1
        weights[f"{head}.0.linear.bias"] = torch.randn(HIDDEN) * 0.1
        weights[f"{head}.1.weight"] = torch.randn(VOCAB, HIDDEN)
    root.mkdir()
    save_file(weights, str(root / "medusa_lm_head.safetensors"))
    config = {"medusa_num_heads": num_heads, "medusa_num_layers": 1}
    (root / "config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))
    return weights


def _heads_reference(weights: dict[str, torch.Tensor], hidden: torch.Tensor) -> list[int]:
    guesses = []
    for head in range(len(weights) // 3):
        w, b = weights[f"{head}.0.linear.weight"], weights[f"{head}.0.linear.bias"]
        x = hidden + torch.nn.functional.silu(hidden @ w.T + b)
        guesses.append(int((x @ weights[f"{head}.1.weight"].T).argmax()))
    return guesses


def test_the_heads_guess_from_the_last_hidden_state(tiny_checkpoint, make_runner, tmp_path):
    base, model = tiny_checkpoint("llama")
    weights = _medusa_folder(tmp_path / "medusa", base)
    runner = make_runner(tmp_path / "medusa", block_size=4)
    assert runner.speculate == 3  # --speculate unset: every head, as TGI
    prompt = PROMPTS[1]
    plan = prefill_plan([prompt], blocks_per_sequence=8, batch_size=1, seq_len=len(prompt))
    [out] = runner.execute(plan).outputs
    with torch.no_grad():
        hidden = model.model(torch.tensor([prompt])).last_hidden_state[0, -1]
    assert out.draft == tuple(_heads_reference(weights, hidden))


def _generate(make_runner, folder: Path, speculate: int) -> tuple[dict[int, list[int]], float]:
    runner = make_runner(folder, block_size=4, speculate=speculate)
    settings = SchedulerSettings(
        max_input_tokens=32, max_total_tokens=64, block_size=4, speculate=runner.speculate
    )
    engine = Engine.create(settings, runner, eos_token_ids=[])
    for request_id, prompt in PROMPTS.items():
        engine.add_request(
            GenerationRequest(request_id, prompt, 20, SamplingParams(), ignore_eos=True)
        )
    events = run_until_idle(engine)
    stats = engine.stats().steps
    tokens = {
        i: [e.token_id for e in evs if isinstance(e, TokenEvent)] for i, evs in events.items()
    }
    return tokens, stats.skipped_tokens.sum if stats else 0.0


def test_medusa_drafts_keep_plain_decoding_s_answers(tiny_checkpoint, make_runner, tmp_path):
    base, model = tiny_checkpoint("llama")
    weights = _medusa_folder(tmp_path / "medusa", base, num_heads=2)
    # head 0 made to guess the model's own next token again (right where the model repeats
    # itself), head 1 random: verification meets right and wrong guesses
    weights["0.0.linear.weight"].zero_()
    weights["0.0.linear.bias"].zero_()
    weights["0.1.weight"] = model.lm_head.weight.detach().clone()
    save_file(weights, str(tmp_path / "medusa" / "medusa_lm_head.safetensors"))
    plain, _ = _generate(make_runner, base, 0)
    drafted, skipped = _generate(make_runner, tmp_path / "medusa", 2)
    assert drafted == plain
    assert skipped > 0  # some guesses were accepted


def test_speculate_beyond_the_heads_is_refused(tiny_checkpoint, make_runner, tmp_path):
    base, _ = tiny_checkpoint("llama")
    _medusa_folder(tmp_path / "medusa", base, num_heads=2)
    with pytest.raises(ValueError) as raised:
        make_runner(tmp_path / "medusa", speculate=3)
    assert str(raised.value) == (
        "Speculate is set to `3` but this medusa models only has `2` heads, please make them match"
    )
