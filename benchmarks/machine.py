"""What the machine under a benchmark offers, and who else is using it.

``machine_info`` describes the host; ``machine_limits`` measures its ceilings (bf16 and fp32
matmul GFLOPS at a decode-like shape, memory read bandwidth) and the token rates they allow.
``cpu_seconds`` / ``cpu_share`` split the cores used over a run between a server's session,
this client and everything else, and ``wait_until_quiet`` holds a run back while other work
keeps the cores busy. Starting servers and writing reports is ``compare.py``'s job.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "CLEAN_OTHER_CORES",
    "NO_SESSION",
    "cpu_seconds",
    "cpu_share",
    "machine_info",
    "machine_limits",
    "wait_until_quiet",
]

NO_SESSION = -1  # for cpu_seconds: count this process alone
CLEAN_OTHER_CORES = 0.25  # a row is trusted while other work took less than this on average


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line]
    flags = next(
        (line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), []
    )
    meminfo = Path("/proc/meminfo").read_text().split()
    return {
        "cpu_model": models[0] if models else platform.processor(),
        "cpu_flags": sorted(flags),  # the kernels each server can use (avx512_bf16, amx_*)
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(int(meminfo[1]) / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _best_seconds(step: Callable[[], object], min_s: float = 1.0) -> float:
    """The fastest of repeated runs of ``step`` (after one warm-up), over about ``min_s``."""
    step()
    best, spent = float("inf"), 0.0
    while spent < min_s:
        start = time.perf_counter()
        step()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return best


def machine_limits(num_threads: int, num_params: int, gguf_bytes: int) -> dict[str, float]:
    """bf16 matmul GFLOPS at [32 x 576] x [576 x 1536], read bandwidth, and the ceilings."""
    import torch

    torch.set_num_threads(num_threads)
    a, b = torch.randn(32, 576).bfloat16(), torch.randn(576, 1536).bfloat16()
    flops = 2 * 32 * 576 * 1536
    bf16 = flops / _best_seconds(lambda: [a @ b for _ in range(50)]) * 50 / 1e9
    a32, b32 = a.float(), b.float()
    fp32 = flops / _best_seconds(lambda: [a32 @ b32 for _ in range(50)]) * 50 / 1e9
    big = torch.ones(2**27)  # 512 MiB of float32: far beyond any cache
    bandwidth = big.numel() * 4 / _best_seconds(big.sum, 2.0) / 1e9
    del big
    return {
        "threads": num_threads,
        "matmul_bf16_gflops": round(bf16, 1),
        "matmul_fp32_gflops": round(fp32, 1),
        "read_bandwidth_gb_s": round(bandwidth, 2),
        # Decode reads every weight once per step: batch 1 is bound by bandwidth...
        "ceiling_batch1_tok_s_bf16_weights": round(bandwidth * 1e9 / (2 * num_params), 1),
        "ceiling_batch1_tok_s_gguf_weights": round(bandwidth * 1e9 / gguf_bytes, 1),
        # ...and a big batch by ~2 flops per parameter per token at the bf16 matmul rate.
        "ceiling_batch32_tok_s_bf16_compute": round(bf16 * 1e9 / (2 * num_params), 1),
    }


def cpu_seconds(session: int) -> tuple[float, float, float]:
    """CPU seconds so far: the whole machine busy, the processes of ``session``, this process."""
    tick = os.sysconf("SC_CLK_TCK")
    jiffies = [int(v) for v in Path("/proc/stat").read_text().split()[1:9]]
    busy = (sum(jiffies) - jiffies[3] - jiffies[4]) / tick  # all but idle and iowait
    server = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            fields = (text := stat.read_text())[text.rindex(")") + 2 :].split()
            if int(fields[3]) == session:  # stat fields 6 (session), 14-15 (utime, stime)
                server += (int(fields[11]) + int(fields[12])) / tick
    return busy, server, sum(os.times()[:2])


def cpu_share(before: tuple[float, float, float], after: tuple[float, float, float],
              elapsed: float) -> dict[str, float]:  # fmt: skip
    """Cores used on average by the server, by this client, and by everything else."""
    busy, server, client = (b - a for a, b in zip(before, after, strict=True))
    return {
        "server_cores": round(server / elapsed, 2),
        "client_cores": round(client / elapsed, 2),
        "other_cores": round(max(0.0, busy - server - client) / elapsed, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }


def wait_until_quiet(pid: int, max_wait_s: float, max_other_cores: float = 0.2) -> float:
    """Waits (up to ``max_wait_s``) until work outside this benchmark uses under
    ``max_other_cores`` over 2 s; returns what it used last. Shared machines need it."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before, started = cpu_seconds(pid), time.perf_counter()
        time.sleep(2.0)
        other = cpu_share(before, cpu_seconds(pid), time.perf_counter() - started)["other_cores"]
        if other < max_other_cores or time.monotonic() >= deadline:
            return other
        print(f"   waiting for a quiet machine: other work uses {other} cores", flush=True)
