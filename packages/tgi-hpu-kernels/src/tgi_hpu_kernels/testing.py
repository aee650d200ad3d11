"""What tests (here and in other packages) build on: tiny random checkpoints (needs
``transformers``), a fixed English text, and teacher-forced scores.

``save_tiny_checkpoint(folder, "llama")`` writes config.json + model.safetensors of a
two-layer model with random weights, built by transformers from its own config class, and
returns the transformers model so a test can compare against it. Nothing is downloaded.
``english_text`` is a deterministic text for real-model accuracy tests; ``TokenScore`` sums
KL, top-1 agreement and perplexity of a model's logits against a reference's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from tgi_core.contract import StepPlan
    from tgi_hpu_kernels.runner import TorchModelRunner

__all__ = [
    "TINY_CONFIGS",
    "Family",
    "TokenScore",
    "english_text",
    "prefill_plan",
    "save_tiny_checkpoint",
    "teacher_forced_logits",
]

Family = Literal["gemma", "gemma2", "llama", "llama3", "mistral", "qwen2"]

_COMMON: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # GQA
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "initializer_range": 0.05,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {"tie_word_embeddings": True}),
    # Llama 3.x rope scaling with a short original context, so it changes frequencies.
    "llama3": (
        "LlamaConfig",
        {
            "tie_word_embeddings": True,
            "rope_scaling": {
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        },
    ),
    "mistral": ("MistralConfig", {"sliding_window": 8, "head_dim": 16}),
    # Layer 0 full attention, layer 1 sliding (max_window_layers=1); q/k/v biases.
    "qwen2": (
        "Qwen2Config",
        {
            "use_sliding_window": True,
            "sliding_window": 8,
            "max_window_layers": 1,
            "tie_word_embeddings": True,
        },
    ),
    # head_dim 32, not hidden / heads; random norm weights (save_tiny_checkpoint); weights
    # large enough that the tanh GELU and the exact one differ beyond the parity tolerance.
    "gemma": ("GemmaConfig", {"head_dim": 32, "initializer_range": 0.15}),
    # Layer 0 sliding, layer 1 full (the default layer_types); a query_pre_attn_scalar that
    # is not head_dim; caps low enough that the scores and logits reach into the tanh.
    "gemma2": (
        "Gemma2Config",
        {
            "head_dim": 32,
            "initializer_range": 0.15,
            "sliding_window": 8,
            "query_pre_attn_scalar": 24,
            "attn_logit_softcapping": 3.0,
            "final_logit_softcapping": 2.0,
        },
    ),
}


def save_tiny_checkpoint(
    folder: Path, family: Family, *, seed: int = 0, **overrides: Any
) -> torch.nn.Module:
    """Writes a tiny random ``family`` checkpoint (float32 safetensors) into ``folder``.

    Returns:
        The transformers model (eval mode, float32, eager attention) whose weights were saved.
    """
    import transformers

    class_name, extra = TINY_CONFIGS[family]
    config = getattr(transformers, class_name)(**{**_COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    auto = transformers.AutoModelForCausalLM
    model: Any = auto.from_config(config, attn_implementation="eager")  # type: ignore[no-untyped-call]
    if family == "qwen2":  # transformers zero-initialises biases: make them matter
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias"):
                    param.normal_(0.0, 0.05)
    if family.startswith("gemma"):  # norm weights start at 0 (1 + w): make them matter
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    evaluated: torch.nn.Module = model.eval()
    return evaluated


_SUBJECTS = (
    "The river",
    "A small village",
    "The old library",
    "Our engineer",
    "The winter market",
    "A patient teacher",
    "The northern railway",
    "A quiet lab",
)
_VERBS = ("carried", "remembered", "measured", "welcomed", "rebuilt", "described", "followed")
_OBJECTS = (
    "the stories of its founders",
    "three hundred and twelve letters",
    "the light of early morning",
    "every traveller who asked for directions",
    "a careful record of the harvest",
    "the sound of distant bells",
    "the equations written on the wall",
)
_CODAS = (
    "before the first snow fell.",
    "while the city slept.",
    "in the year 1887.",
    "with remarkable patience.",
    "as the students watched.",
    "long after the storm had passed.",
    "under a sky full of stars.",
    "without saying a word.",
)


def english_text(num_sentences: int) -> str:
    """A deterministic English text: sentences varied by coprime strides, in paragraphs."""
    sentences = [
        f"{_SUBJECTS[i % 8]} {_VERBS[(3 * i + 1) % 7]} {_OBJECTS[(5 * i + 2) % 7]} "
        f"{_CODAS[(3 * i + 5) % 8]}"
        for i in range(num_sentences)
    ]
    return "\n\n".join(" ".join(sentences[i : i + 6]) for i in range(0, num_sentences, 6))


@dataclass
class TokenScore:
    """Running sums over scored positions: KL(reference || test), top-1 agreement, and the
    test's negative log-likelihood of the text's next tokens (when given)."""

    kl: float = 0.0
    agree: int = 0
    count: int = 0
    nll: float = 0.0

    def add(self, reference: Tensor, test: Tensor, targets: Tensor | None = None) -> None:
        ref = torch.log_softmax(reference.float(), dim=-1)
        out = torch.log_softmax(test.float(), dim=-1)
        self.kl += float((ref.exp() * (ref - out)).sum())
        self.agree += int((ref.argmax(-1) == out.argmax(-1)).sum())
        self.count += ref.shape[0]
        if targets is not None:
            self.nll -= float(out.gather(-1, targets.view(-1, 1)).sum())

    @property
    def mean_kl(self) -> float:
        return self.kl / self.count

    @property
    def top1(self) -> float:
        return self.agree / self.count

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.count)


def teacher_forced_logits(
    runner: TorchModelRunner, sequences: list[list[int]], prefill_len: int, block_size: int
) -> Tensor:
    """A runner's teacher-forced logits ``[sequences, length - 1, vocab]``: ``prefill_len``
    tokens of every sequence prefilled together, then the rest decoded one step at a time
    (KV blocks ``0..`` of ``block_size`` slots, consecutive per sequence)."""
    from tgi_core.contract import (
        DecodeItem,
        DecodeShape,
        PrefillItem,
        PrefillShape,
        SamplingParams,
        StepPlan,
    )

    length = len(sequences[0])
    per_seq = -(-(length + 1) // block_size)
    tables = [tuple(range(i * per_seq, (i + 1) * per_seq)) for i in range(len(sequences))]
    prefill = tuple(
        PrefillItem(
            seq_id=i,
            token_ids=tuple(s[:prefill_len]),
            num_prompt_tokens=prefill_len,
            num_cached_tokens=0,
            block_table=t,
            sampling=SamplingParams(),
        )
        for i, (s, t) in enumerate(zip(sequences, tables, strict=True))
    )
    shape = PrefillShape(len(sequences), prefill_len)
    rows = runner.compute_logits(
        StepPlan(step_id=0, shape=shape, prefill=prefill), every_token=True
    )
    steps = [rows.view(len(sequences), prefill_len, -1)]
    for position in range(prefill_len, length - 1):
        decode = tuple(
            DecodeItem(seq_id=i, token_id=s[position], position=position, block_table=t)
            for i, (s, t) in enumerate(zip(sequences, tables, strict=True))
        )
        plan = StepPlan(step_id=position, shape=DecodeShape(len(sequences), per_seq), decode=decode)
        steps.append(runner.compute_logits(plan).unsqueeze(1))
    return torch.cat(steps, dim=1)


def prefill_plan(
    prompts: Sequence[Sequence[int]], *, blocks_per_sequence: int, batch_size: int, seq_len: int
) -> StepPlan:
    """One prefill step of ``prompts`` (greedy), sequence ``i`` in KV blocks
    ``[i * blocks_per_sequence, (i + 1) * blocks_per_sequence)``, at bucket shape
    ``(batch_size, seq_len)``."""
    from tgi_core.contract import PrefillItem, PrefillShape, SamplingParams, StepPlan

    items = tuple(
        PrefillItem(
            seq_id=i,
            token_ids=tuple(prompt),
            num_prompt_tokens=len(prompt),
            num_cached_tokens=0,
            block_table=tuple(range(blocks_per_sequence * i, blocks_per_sequence * (i + 1))),
            sampling=SamplingParams(),
        )
        for i, prompt in enumerate(prompts)
    )
    return StepPlan(step_id=0, prefill=items, shape=PrefillShape(batch_size, seq_len))
