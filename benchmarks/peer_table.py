"""bench:compare's peers: how each server starts and is loaded (the PEERS table).

Each command is a template: ``{port}``, ``{spare_port}``, ``{gguf}``, ``{model_dir}``,
``{gguf_name}``, ``{slots}``, ``{ctx}``, ``{threads}`` and ``{python}`` are filled in by
compare.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from precisions import BF16_FLAGS

from tgi_server.benchmark.client import Api

ROOT = Path(__file__).resolve().parent.parent

# Where build_llama_server.sh puts its build: the user's cache, shared by every clone.
PEERS_CACHE = Path(
    os.environ.get("PEERS_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tgi-gaudi" / "peers"
)
LLAMA_SERVER = PEERS_CACHE / "bin" / "llama-server"
FIXED_SLOTS = 32


@dataclass(frozen=True)
class Peer:
    """How to start one server and load it. ``{port}``, ``{spare_port}`` (a second free
    port), ``{gguf}`` (the weights in ``precision``), ``{model_dir}``, ``{gguf_name}``,
    ``{slots}``, ``{ctx}``, ``{threads}`` and ``{python}`` are filled in."""

    command: tuple[str, ...]
    api: Api = "chat"
    extra_body: dict[str, Any] = field(default_factory=lambda: {"ignore_eos": True})
    slots_per_level: bool = False  # also start one server per level with slots = clients
    env: dict[str, str] = field(default_factory=dict)  # added to the server's environment
    precision: str | None = None  # the GGUF as given, or converted to "f16" / "bf16"
    cpu_flags: tuple[str, ...] = ()  # runs only where the CPU has one of these
    describe: bool = False  # record the server's /info
    prefix_metrics: bool = False  # record the prefix-cache counters of each level


# Flash attention off: at 32 clients on 2 cores it gave llama.cpp@0c1e57098 +25% (BF16) and
# +15% (Q4_1) over its default "auto" (packages/tgi-server/README.md, 2026-12-07). -b/-ub stay
# at their defaults: -ub 128 did not help. --llama-args overrides either.
LLAMA_SERVER_ARGS = ("-m", "{gguf}", "--host", "127.0.0.1", "--port", "{port}", "-t",
                     "{threads}", "-np", "{slots}", "-c", "{ctx}", "--cont-batching",
                     "--no-webui", "-fa", "off")  # fmt: skip


def _llama(precision: str | None, *extra: str, cpu_flags: tuple[str, ...] = ()) -> Peer:
    command = (str(LLAMA_SERVER), *LLAMA_SERVER_ARGS, *extra)
    return Peer(command, slots_per_level=True, precision=precision, cpu_flags=cpu_flags)


PEERS: dict[str, Peer] = {
    # llama.cpp@0c1e57098 segfaults at load repacking Q4_1 weights for AMX; without AMX
    # nothing repacks Q4_1, so --no-repack costs nothing there.
    "llama.cpp-q4_1": _llama(None, "--no-repack"),
    "llama.cpp-f16": _llama("f16"),
    # llama.cpp's BF16 kernels are emulated (slow) without native bf16: not a fair peer there.
    "llama.cpp-bf16": _llama("bf16", cpu_flags=BF16_FLAGS),
    "transformers": Peer(
        ("{python}", str(ROOT / "benchmarks" / "peers" / "transformers_server.py"),
         "--port", "{port}", "--model-dir", "{model_dir}", "--gguf-file", "{gguf_name}",
         "--threads", "{threads}"),
    ),
    # Continuous batching: llama.cpp's slots as requests per step, its context as KV cache.
    "transformers-batched": Peer(
        ("{python}", str(ROOT / "benchmarks" / "peers" / "transformers_batched_server.py"),
         "--port", "{port}", "--model-dir", "{model_dir}", "--gguf-file", "{gguf_name}",
         "--threads", "{threads}", "--max-batch", "{slots}", "--kv-cache-tokens", "{ctx}"),
    ),
    # The chat route like the peers; the variable is TGI's benchmark mode (EOS ignored), as
    # the peers' ignore_eos. Our dtype is the server's default for this CPU: /info records it.
    "ours": Peer(
        ("text-generation-launcher", "--model-id", "{gguf}", "--hostname", "127.0.0.1",
         "--port", "{port}", "--prometheus-port", "{spare_port}", "--max-batch-size", "{slots}"),
        env={"TEXT_GENERATION_SERVER_IGNORE_EOS_TOKEN": "true"}, describe=True,
        prefix_metrics=True,
    ),
}  # fmt: skip
# The same server without its prefix cache: what the cache gives (issue #13).
PEERS["ours-no-prefix-cache"] = replace(
    PEERS["ours"], env={**PEERS["ours"].env, "PREFIX_CACHING": "false"}
)
# The GGUF's int4/int8 codes kept, or dequantized to the dtype, whatever the device would
# choose (issue #14).
PEERS["ours-int4"] = replace(PEERS["ours"], env={**PEERS["ours"].env, "GGUF_WEIGHTS": "quantized"})
PEERS["ours-dense"] = replace(PEERS["ours"], env={**PEERS["ours"].env, "GGUF_WEIGHTS": "dense"})
