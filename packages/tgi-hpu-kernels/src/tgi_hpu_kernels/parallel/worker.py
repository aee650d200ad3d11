"""``python -m tgi_hpu_kernels.parallel.worker PARENT_PID``: one shard (rank > 0).

Reads its ``RunnerSettings`` as JSON from stdin, builds its ``TorchModelRunner`` (joining
the group, loading its slice of the weights, agreeing on the KV block count), then runs
each plan rank 0 sends until rank 0 says stop. It exits by itself when its parent dies.
Rank 0 starts these processes (``shards.py``); nothing else does.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import msgspec

from tgi_core.settings.slices import RunnerSettings

__all__ = ["main"]

logger = logging.getLogger("tgi_hpu_kernels.parallel.worker")


def _exit_with_parent(parent_pid: int) -> None:
    # Orphaned (rank 0 killed outright): nobody will send a stop, so leave now.
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    parent_pid = int(args[0])
    logging.basicConfig(level=logging.WARNING, format="shard: %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when shards stop
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    settings = msgspec.json.decode(sys.stdin.buffer.read(), type=RunnerSettings)
    from tgi_hpu_kernels.runner import TorchModelRunner

    runner = TorchModelRunner(settings)
    try:
        runner.serve_shard()
    finally:
        runner.close()  # under a MEASURE QUANT_CONFIG: this rank's FP8 statistics
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
