"""``python -m tgi_server.engine.shard PARENT_PID``: one shard (rank > 0) of the engine's runner.

The engine (rank 0) starts these (``shard_supervision.py``), each with its ``RunnerSettings``
as JSON on stdin. Serving the rank is the kernels' ``serve_rank`` (join the group, build the
runner, run each plan rank 0 sends until it says stop), told where a VLM's text model sits
(``tgi_vlm.runner_parts``: rank 0 alone runs the vision side). What this process adds is the
server's policy: only rank 0 acts on Ctrl-C; an orphan (its parent killed outright: nobody
is left to send a stop) or a rank whose rank 0 stopped beating (on another node) exits at
once with code 1; a group that does not form, or a collective that fails (a peer gone),
is one line and exit code 1.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import NoReturn

import msgspec

from tgi_core.settings.slices import RunnerSettings

__all__ = ["main"]


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def _exit_on_rank0_lost(ranks: Sequence[int], why: str) -> NoReturn:
    logging.getLogger(__name__).error("rank 0 lost (%s): this shard exits", why)
    logging.shutdown()
    os._exit(1)  # the main thread may wait in a collective: nothing else would end it


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    parent_pid = int(args[0])
    logging.basicConfig(level=logging.WARNING, format="shard: %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when shards stop
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    settings = msgspec.json.decode(sys.stdin.buffer.read(), type=RunnerSettings)
    from tgi_hpu_kernels.parallel import GroupJoinError, serve_rank
    from tgi_vlm.runner_parts import runner_parts_for

    logger = logging.getLogger(__name__)
    vlm = runner_parts_for(settings)
    try:
        serve_rank(
            settings,
            on_rank0_lost=_exit_on_rank0_lost,
            nested_model=None if vlm is None else vlm.nested_model,
        )
    except GroupJoinError as error:
        logger.error("%s", error)
        return 1
    except RuntimeError as error:  # a collective failed: rank 0 or a peer went away
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        logger.error("rank %d stops: %s", settings.rank, first_line)
        logger.debug("the failure", exc_info=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
