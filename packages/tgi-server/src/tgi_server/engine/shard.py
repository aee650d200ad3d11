"""``python -m tgi_server.engine.shard PARENT_PID``: one shard (rank > 0) of the engine's runner.

The engine (rank 0) starts these (``shard_supervision.py``), each with its ``RunnerSettings``
as JSON on stdin. Serving the rank is the kernels' ``serve_rank`` (join the group, build the
runner, run each plan rank 0 sends until it says stop), told where a VLM's text model sits
(``tgi_vlm.runner_parts``: rank 0 alone runs the vision side). What this process adds is the
server's policy: only rank 0 acts on Ctrl-C, and an orphan (rank 0 killed outright: nobody
is left to send a stop) exits at once with code 1.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

import msgspec

from tgi_core.settings.slices import RunnerSettings

__all__ = ["main"]


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    parent_pid = int(args[0])
    logging.basicConfig(level=logging.WARNING, format="shard: %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when shards stop
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    settings = msgspec.json.decode(sys.stdin.buffer.read(), type=RunnerSettings)
    from tgi_hpu_kernels.parallel import serve_rank
    from tgi_vlm.runner_parts import runner_parts_for

    vlm = runner_parts_for(settings)
    serve_rank(settings, nested_model=None if vlm is None else vlm.nested_model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
