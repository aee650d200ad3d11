"""The engine side of the server: the step loop, its process, and its in-process form.

- ``loop``: ``EngineLoop``, messages in, ``engine.step()``, one message per worker out;
- ``build``: ``build_engine(settings)``, tokenizer + runner + scheduler + warmup;
- ``process``: the engine process (``python -m tgi_server.engine``), its start and readiness;
- ``shard_supervision``: with ``--num-shard`` > 1, ranks 1..N-1 as the engine's children
  (``python -m tgi_server.engine.shard``): started, watched (a dead one ends the engine with
  exit code 1), stopped by PID;
- ``inprocess``: ``InProcessEngine``, the loop on a thread (tests, embedding).

Clients live in ``tgi_server.engine_client``; wire messages in ``tgi_server.ipc``.
"""

from tgi_server.engine.build import ReadyEngine, build_engine, describe_engine
from tgi_server.engine.inprocess import InProcessEngine
from tgi_server.engine.loop import EngineLoop
from tgi_server.engine.process import (
    EngineStartupError,
    run_engine,
    serve_engine,
    start_engine_process,
    wait_until_ready,
)

__all__ = [
    "EngineLoop",
    "EngineStartupError",
    "InProcessEngine",
    "ReadyEngine",
    "build_engine",
    "describe_engine",
    "run_engine",
    "serve_engine",
    "start_engine_process",
    "wait_until_ready",
]
