"""``text-generation-launcher --node-rank N`` with N > 0: a node that runs shards only.

Node 0 runs rank 0 (the engine) and serves HTTP; every other node runs its block of ranks
(``--num-shard`` / ``--nnodes`` of them) as ``python -m tgi_server.engine.shard`` processes,
which join rank 0's group at ``--master-addr:--master-port`` and run the plans it sends.
``ShardNode.run`` starts them and supervises them by PID:

- all exit 0 (rank 0 said stop): exit 0;
- one exits otherwise (the group never formed, rank 0 lost, a failure): the others are
  killed, exit 1, so that an orchestrator restarts the node;
- SIGTERM or SIGINT: the shards are killed (without rank 0 they cannot stop in order; rank
  0 sees them gone and stops the service), exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from tgi_core.settings import Settings

if TYPE_CHECKING:
    from tgi_hpu_kernels.parallel import ShardProcesses

__all__ = ["ShardNode"]

logger = logging.getLogger(__name__)

_POLL_S = 0.1


class ShardNode:
    """Runs this node's shards until they end, fail, or a signal comes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()

    def run(self) -> int:
        from tgi_hpu_kernels.parallel import ShardProcesses, node_ranks  # torch: only here
        from tgi_vlm.runner_parts import runner_parts_for

        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            node = self.settings.node_rank
            # this node's first rank: not rank 0, so no VLM vision side loads here
            runner = self.settings.runner(
                rank=node * self.settings.num_shard // self.settings.nnodes
            )
            ranks = node_ranks(runner, node)
            logger.info(
                "Node %d of %d: starting shard ranks %d-%d, rank 0 at %s:%d",
                node,
                runner.nnodes,
                ranks[0],
                ranks[-1],
                runner.master_addr,
                runner.master_port,
            )
            command = [sys.executable, "-m", "tgi_server.engine.shard", str(os.getpid())]
            try:
                vlm = runner_parts_for(runner)  # a VLM's text model is the part sharded
                nested = None if vlm is None else vlm.nested_model
                shards = ShardProcesses.start(runner, command, node_rank=node, nested_model=nested)
            except ValueError as error:  # the model does not split this way
                logger.error("%s", error)
                return 1
            return self._supervise(shards)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _supervise(self, shards: ShardProcesses) -> int:
        while not self._stop.wait(_POLL_S):
            codes = shards.exit_codes()
            failed = [(rank, code) for rank, code in codes.items() if code not in (None, 0)]
            if failed:
                rank, code = failed[0]
                logger.error("Shard %d exited with status %d: stopping this node", rank, code)
                shards.kill()
                return 1
            if all(code == 0 for code in codes.values()):
                logger.info("Rank 0 stopped the shards: shutdown complete")
                return 0
        logger.info("Stopping this node's shards")
        shards.kill()
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        logger.info("Received %s: shutting down", signal.Signals(signum).name)
        self._stop.set()


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
