"""One rank > 0: ``serve_rank(settings)``, and ``python -m tgi_hpu_kernels.parallel.worker``.

``serve_rank`` joins the group, builds its ``TorchModelRunner`` (loading its slice of the
weights, agreeing on the KV block count), runs each plan rank 0 sends until rank 0 says
stop, then closes the runner and leaves the group. Given ``on_rank0_lost``, it watches rank
0's heartbeat and reports its loss there (a lost rank 0 sends no stop: the rank would wait
for a plan forever). A rank > 0 of a vision-language model serves its text model alone
(``nested_model``): rank 0 runs the vision side and sends the prompt embeddings. The
module's ``main`` is a bare rank process (its ``RunnerSettings`` as JSON on stdin, text
models only) for ``ShardProcesses.start`` in tests and embedders, with no process policy: a
rank 0 that dies closes its connections, which fails the bare rank's next collective (a
host that vanishes without closing them is what the heartbeat is for). The server's engine
runs ``tgi_server.engine.shard`` instead, with its own policy (signals, leaving when its
parent or rank 0 is lost) and a VLM's text model found.
"""

from __future__ import annotations

import sys

import msgspec

from tgi_core.nested_model import NestedTextModel
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.parallel.group import TensorParallelGroup
from tgi_hpu_kernels.parallel.liveness import OnLost

__all__ = ["main", "serve_rank"]


def serve_rank(
    settings: RunnerSettings,
    on_rank0_lost: OnLost | None = None,
    *,
    nested_model: NestedTextModel | None = None,
) -> None:
    """Serves rank ``settings.rank`` (> 0) until rank 0 says stop; ``nested_model``: where
    the text model sits in a multimodal checkpoint (``tgi_vlm.runner_parts`` knows)."""
    from tgi_hpu_kernels.device import select_device  # these import this package
    from tgi_hpu_kernels.runner import TorchModelRunner

    device = select_device(settings.device, settings)
    group = TensorParallelGroup.join(settings, device.prepare_collectives(), device.torch_device)
    if on_rank0_lost is not None:
        group.watch([0], on_rank0_lost)
    try:
        runner = TorchModelRunner(settings, device=device, group=group, nested_model=nested_model)
        try:
            runner.serve_shard()
        finally:
            runner.close()  # under a MEASURE QUANT_CONFIG: this rank's FP8 statistics
    finally:
        group.leave()


def main() -> int:
    serve_rank(msgspec.json.decode(sys.stdin.buffer.read(), type=RunnerSettings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
