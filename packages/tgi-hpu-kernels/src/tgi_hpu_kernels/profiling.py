"""torch.profiler over ``execute()`` calls, driven by TGI-Gaudi's PROF_* settings.

PROF_WAITSTEP / PROF_WARMUPSTEP / PROF_STEP are the profiler schedule's wait / warmup /
active step counts (PROF_STEP > 0 turns profiling on); only ranks listed in PROF_RANKS
profile; PROF_RECORD_SHAPES records operator input shapes. Steps count from the first
``execute()`` after construction (warmup runs are not profiled). When the active steps end,
one Chrome trace (``rank<r>_step<n>.pt.trace.json``) is written under PROF_PATH; open it in
chrome://tracing or https://ui.perfetto.dev.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from tgi_core.settings.slices import ProfileSettings

__all__ = ["StepProfiler"]

logger = logging.getLogger(__name__)


class StepProfiler:
    """Wraps each runner step; a no-op unless profiling is on for this rank."""

    def __init__(
        self,
        settings: ProfileSettings,
        *,
        rank: int,
        activities: Sequence[torch.profiler.ProfilerActivity],
    ) -> None:
        self._settings = settings
        self._rank = rank
        self._activities = list(activities)
        self._active = settings.enabled and rank in settings.ranks
        self._profiler: torch.profiler.profile | None = None
        self._num_steps = 0
        self.trace_paths: list[Path] = []

    @property
    def active(self) -> bool:
        return self._active

    def _start(self) -> torch.profiler.profile:
        s = self._settings
        profiler = torch.profiler.profile(
            activities=self._activities,
            schedule=torch.profiler.schedule(
                wait=s.wait_steps, warmup=s.warmup_steps, active=s.active_steps, repeat=1
            ),
            on_trace_ready=self._write_trace,
            record_shapes=s.record_shapes,
        )
        profiler.start()
        return profiler

    def _write_trace(self, profiler: torch.profiler.profile) -> None:
        folder = Path(self._settings.path)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"rank{self._rank}_step{self._num_steps}.pt.trace.json"
        profiler.export_chrome_trace(str(path))
        self.trace_paths.append(path)
        logger.info("profiler trace written to %s", path)

    @contextmanager
    def step(self) -> Iterator[None]:
        """Profiles the enclosed runner step (according to the schedule)."""
        if not self._active:
            yield
            return
        if self._profiler is None:
            self._profiler = self._start()
        with torch.profiler.record_function("tgi_runner_step"):
            yield
        self._num_steps += 1
        self._profiler.step()
        s = self._settings
        if self._num_steps >= s.wait_steps + s.warmup_steps + s.active_steps:
            self.close()

    def close(self) -> None:
        """Stops the profiler (writing a pending trace)."""
        if self._profiler is not None:
            self._profiler.stop()
            self._profiler = None
        self._active = False
