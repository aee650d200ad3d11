"""The embedded SmolLM2-135M-Instruct GGUF: our greedy output equals transformers' ``generate``.

Both load the same Q4_1 file in float32 (transformers dequantizes with the same ``gguf``
package); eight chat-templated prompts, 64 new tokens each, run alone and batched together.
"""

from __future__ import annotations

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
from tgi_hpu_kernels.device.cpu import CpuDevice
from tgi_hpu_kernels.loader import EMBEDDED_MODEL_FILE, embedded_model_path
from tgi_hpu_kernels.runner import TorchModelRunner

pytestmark = pytest.mark.slow

QUESTIONS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers.",
    "How do I boil an egg?",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Give me a tip for learning Python.",
)
NUM_NEW_TOKENS = 64
BLOCK_SIZE = 16


@pytest.fixture(scope="module")
def hf_side() -> tuple[list[list[int]], list[list[int]]]:
    """(prompts, transformers' greedy continuations), computed once."""
    transformers = pytest.importorskip("transformers")
    folder = str(embedded_model_path().parent)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=EMBEDDED_MODEL_FILE)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=EMBEDDED_MODEL_FILE, dtype=torch.float32
    ).eval()
    prompts = []
    for question in QUESTIONS:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
        )
        prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    # One left-padded batch. The attention mask must be explicit: the chat template holds
    # <|im_end|>, which is also the pad token, and generate would mask it out otherwise.
    longest = max(len(p) for p in prompts)
    pad = tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(
            input_ids,
            attention_mask=attention_mask,
            max_new_tokens=NUM_NEW_TOKENS,
            do_sample=False,
            eos_token_id=None,  # run all 64 tokens, past <|im_end|>
            pad_token_id=pad,
        )
    continuations = out[:, longest:].tolist()
    return prompts, continuations


@pytest.fixture(scope="module")
def runner() -> TorchModelRunner:
    settings = RunnerSettings(
        dtype="float32", device="cpu", block_size=BLOCK_SIZE, max_total_tokens=512
    )
    return TorchModelRunner(settings, device=CpuDevice(), num_kv_blocks=8 * 512 // BLOCK_SIZE)


def _generate(runner: TorchModelRunner, prompts: list[list[int]], first_id: int) -> list[list[int]]:
    """Greedy generation of NUM_NEW_TOKENS for all ``prompts`` in one batch."""
    per_seq = 512 // BLOCK_SIZE
    tables = [tuple(range(i * per_seq, (i + 1) * per_seq)) for i in range(len(prompts))]
    request_ids = [first_id + i for i in range(len(prompts))]
    prefill = tuple(
        PrefillItem(
            request_id=s,
            token_ids=tuple(p),
            num_prompt_tokens=len(p),
            num_cached_tokens=0,
            block_table=t,
            sampling=SamplingParams(),
        )
        for s, p, t in zip(request_ids, prompts, tables, strict=True)
    )
    shape = PrefillShape(8, 128)
    out = runner.execute(StepPlan(step_id=0, shape=shape, prefill=prefill))
    generated = [[o.token_id] for o in out.outputs]
    for step in range(1, NUM_NEW_TOKENS):
        decode = tuple(
            DecodeItem(request_id=s, token_id=g[-1], position=len(p) + step - 1, block_table=t)
            for s, g, p, t in zip(request_ids, generated, prompts, tables, strict=True)
        )
        out = runner.execute(StepPlan(step_id=step, shape=DecodeShape(8, 8), decode=decode))
        for g, o in zip(generated, out.outputs, strict=True):
            g.append(o.token_id)
    runner.execute(StepPlan(step_id=NUM_NEW_TOKENS, shape=None, released=tuple(request_ids)))
    return generated


def test_greedy_alone_matches_transformers(hf_side, runner):
    prompts, expected = hf_side
    for i, prompt in enumerate(prompts):
        assert _generate(runner, [prompt], first_id=100 + i) == [expected[i]], QUESTIONS[i]


def test_greedy_batched_matches_transformers(hf_side, runner):
    prompts, expected = hf_side
    assert _generate(runner, prompts, first_id=200) == expected
