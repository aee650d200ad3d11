"""The bucketed continuous-batching scheduler and engine loop (pure Python, no torch).

``Engine`` drives a ``Scheduler`` and a ``tgi_core.contract.ModelRunner``; ``all_shapes``
lists every shape a plan can have (what warmup compiles); ``tgi_scheduler.testing.FakeRunner``
is a deterministic runner for tests and simulations.
"""

from tgi_core.engine_stats import SchedulerStats
from tgi_scheduler.__about__ import __version__
from tgi_scheduler.block_allocator import BlockAllocator, NoFreeBlocksError
from tgi_scheduler.buckets import all_shapes
from tgi_scheduler.engine import Engine
from tgi_scheduler.scheduler import Scheduler, StopCheckerFactory
from tgi_scheduler.sequence import Sequence, SequenceStatus

__all__ = [
    "BlockAllocator",
    "Engine",
    "NoFreeBlocksError",
    "Scheduler",
    "SchedulerStats",
    "Sequence",
    "SequenceStatus",
    "StopCheckerFactory",
    "__version__",
    "all_shapes",
]
