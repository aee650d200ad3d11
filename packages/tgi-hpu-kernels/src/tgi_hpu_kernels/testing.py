"""What tests (here and in other packages) build on: tiny random checkpoints (needs
``transformers``), a fixed English text, and teacher-forced scores.

``save_tiny_checkpoint(folder, "llama")`` writes config.json + model.safetensors of a
two-layer model with random weights, built by transformers from its own config class, and
returns the transformers model so a test can compare against it. Nothing is downloaded.
``save_word_tokenizer`` adds a word-level tokenizer, for a server to load the folder.
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
    "TINY_FALLBACK_CONFIGS",
    "Family",
    "TokenScore",
    "english_text",
    "greedy_reference",
    "prefill_plan",
    "save_tiny_checkpoint",
    "save_tiny_lora_adapter",
    "save_word_tokenizer",
    "teacher_forced_logits",
]

Family = Literal[
    "llama",
    "llama3",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "starcoder2",
    "phi3",
    "gemma",
    "gemma2",
    "falcon",
    "falcon_new",
    "gpt_bigcode",
    "gpt_bigcode_mha",
    "gpt_neox",
    "opt",
    "bloom",
]

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

_FALCON: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": 64,
    "ffn_hidden_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
    "layer_norm_epsilon": 1e-3,
    "bias": True,
    "initializer_range": 0.05,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

_GPT_BIGCODE: dict[str, Any] = {
    "vocab_size": 128,
    "n_embd": 64,
    "n_inner": 96,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 256,
    "layer_norm_epsilon": 1e-3,
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
    # 4 experts, top 2, Mistral's sliding window.
    "mixtral": (
        "MixtralConfig",
        {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 8},
    ),
    # LongRoPE (short != long factors, attention factor from 256 / 64) over 12 of 16 head
    # dims; a window on every layer. Long factors from position 64 on: the shared parity
    # tests stay below it, test_family_phi3 crosses it. Pad id 0: 32000 is past the vocab.
    "phi3": (
        "Phi3Config",
        {
            "original_max_position_embeddings": 64,
            "partial_rotary_factor": 0.75,
            "rope_scaling": {
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5],
                "long_factor": [1.5, 2.0, 3.0, 4.5, 6.0, 8.0],
            },
            "sliding_window": 32,
            "pad_token_id": 0,
        },
    ),
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
    # q/k norms (random weights: save_tiny_checkpoint), explicit head_dim, the last layer
    # sliding.
    "qwen3": (
        "Qwen3Config",
        {
            "head_dim": 32,
            "use_sliding_window": True,
            "sliding_window": 8,
            "max_window_layers": 1,
        },
    ),
    # Biases everywhere, tanh GELU and tied embeddings (StarCoder2's defaults), a window on
    # every layer, and a LayerNorm eps large enough to matter at this scale.
    "starcoder2": (
        "Starcoder2Config",
        {"sliding_window": 8, "norm_epsilon": 1e-3, "hidden_act": "gelu_pytorch_tanh"},
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
    # Falcon names its fields its own way, so its configs do not take _COMMON. Old
    # architecture: multi-query (one KV head), parallel attention + MLP on one shared
    # LayerNorm, biases, exact GELU; rope theta and a linear rope scaling that matter.
    "falcon": (
        "FalconConfig",
        {
            **_FALCON,
            "multi_query": True,
            "parallel_attn": True,
            "rope_parameters": {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0},
        },
    ),
    # New architecture (40B/180B): 2 KV groups in the interleaved fused q/k/v, ln_attn and
    # ln_mlp.
    "falcon_new": (
        "FalconConfig",
        {**_FALCON, "new_decoder_architecture": True, "num_kv_heads": 2},
    ),
    # GPT-2's field names, so no _COMMON either. Learned positions, no rope; multi-query
    # (one KV head after all queries in c_attn), biases, tanh GELU, tied embeddings.
    "gpt_bigcode": ("GPTBigCodeConfig", {**_GPT_BIGCODE, "multi_query": True}),
    # One (q, k, v) triple per head in c_attn, exact GELU, its own LM head.
    "gpt_bigcode_mha": (
        "GPTBigCodeConfig",
        {
            **_GPT_BIGCODE,
            "multi_query": False,
            "activation_function": "gelu",
            "tie_word_embeddings": False,
        },
    ),
}

# Families with no native implementation, served through transformers: their configs name
# things their own way, so they do not take _COMMON.
TINY_FALLBACK_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    # partial rotary (a quarter of each head), parallel attention + MLP residual
    "gpt_neox": (
        "GPTNeoXConfig",
        {
            "vocab_size": 128,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 256,
            "rotary_pct": 0.25,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    ),
    # learned absolute positions (offset by 2), LayerNorm, ReLU MLP
    "opt": (
        "OPTConfig",
        {
            "vocab_size": 128,
            "hidden_size": 64,
            "ffn_dim": 96,
            "word_embed_proj_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 256,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        },
    ),
    # ALiBi, outside transformers' attention interface: the fallback refuses it
    "bloom": (
        "BloomConfig",
        {"vocab_size": 128, "hidden_size": 64, "n_layer": 2, "n_head": 4},
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

    if family in TINY_FALLBACK_CONFIGS:
        class_name, values = TINY_FALLBACK_CONFIGS[family]
    else:
        class_name, extra = TINY_CONFIGS[family]
        values = extra if family.startswith(("falcon", "gpt_bigcode")) else {**_COMMON, **extra}
    config = getattr(transformers, class_name)(**{**values, **overrides})
    torch.manual_seed(seed)
    auto = transformers.AutoModelForCausalLM
    model: Any = auto.from_config(config, attn_implementation="eager")  # type: ignore[no-untyped-call]
    # transformers zeroes biases: make them matter
    layer_norms = ("starcoder2", "falcon", "falcon_new", "gpt_bigcode", "gpt_bigcode_mha")
    if family in ("qwen2", "gpt_neox", "opt", *layer_norms):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias"):
                    param.normal_(0.0, 0.05)
                # LayerNorm weights (the only other vectors there) start at 1
                elif family in layer_norms and param.dim() == 1:
                    param.normal_(1.0, 0.1)
    if family == "qwen3":  # q/k norm weights start at 1: make them matter
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(("q_norm.weight", "k_norm.weight")):
                    param.normal_(1.0, 0.3)
    if family.startswith("gemma"):  # norm weights start at 0 (1 + w): make them matter
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    evaluated: torch.nn.Module = model.eval()
    return evaluated


def greedy_reference(model: torch.nn.Module, prompt: Sequence[int], num_tokens: int) -> list[int]:
    """transformers' greedy continuation of ``prompt``: ``num_tokens`` argmax steps over the
    whole sequence (no cache, no end-of-sequence stop)."""
    ids = torch.tensor([list(prompt)])
    with torch.no_grad():
        for _ in range(num_tokens):
            next_id = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    tokens: list[int] = ids[0, len(prompt) :].tolist()
    return tokens


def save_tiny_lora_adapter(base: Path, folder: Path, *, seed: int, **lora: Any) -> torch.nn.Module:
    """A random PEFT LoRA adapter (``peft.LoraConfig(**lora)``) of the checkpoint in ``base``,
    saved in ``folder``; returns PEFT's model, the reference. PEFT zeroes B: both halves
    are randomised so that the adapter matters. Needs ``peft``."""
    import peft
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    adapted: Any = peft.get_peft_model(model, peft.LoraConfig(**lora))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.1)
    adapted.save_pretrained(folder)
    evaluated: torch.nn.Module = adapted.eval()
    return evaluated


def save_word_tokenizer(folder: Path, vocab_size: int = 128) -> None:
    """A word-level tokenizer for a tiny checkpoint: token ``i`` is the word ``t{i}``, BOS
    ``t1`` and EOS ``t2`` (the tiny configs' ids), so a server can load the folder."""
    import json

    import tokenizers

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "t1", "eos_token": "t2"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


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
    runner: TorchModelRunner,
    sequences: list[list[int]],
    prefill_len: int,
    block_size: int,
    adapter_ids: Sequence[str | None] = (),
) -> Tensor:
    """A runner's teacher-forced logits ``[sequences, length - 1, vocab]``: ``prefill_len``
    tokens of every sequence prefilled together, then the rest decoded one step at a time
    (KV blocks ``0..`` of ``block_size`` slots, consecutive per sequence); sequence ``i``
    with LoRA adapter ``adapter_ids[i]`` where given."""
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
    adapters = list(adapter_ids) or [None] * len(sequences)
    prefill = tuple(
        PrefillItem(
            request_id=i,
            token_ids=tuple(s[:prefill_len]),
            num_prompt_tokens=prefill_len,
            num_cached_tokens=0,
            block_table=t,
            sampling=SamplingParams(),
            adapter_id=adapters[i],
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
            DecodeItem(i, s[position], position, t, adapters[i])
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
            request_id=i,
            token_ids=tuple(prompt),
            num_prompt_tokens=len(prompt),
            num_cached_tokens=0,
            block_table=tuple(range(blocks_per_sequence * i, blocks_per_sequence * (i + 1))),
            sampling=SamplingParams(),
        )
        for i, prompt in enumerate(prompts)
    )
    return StepPlan(step_id=0, prefill=items, shape=PrefillShape(batch_size, seq_len))
