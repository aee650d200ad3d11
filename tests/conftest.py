"""Fixtures shared by the suites that start the real launcher (``e2e``, ``reliability``).

``launch`` starts the real ``text-generation-launcher`` on the embedded SmolLM2 with small
limits (a few seconds of warmup at most), shows each started service's log in a failed
test's report, and kills whatever is left of them at the end of the session;
``stop_and_check`` stops one (SIGTERM, exit 0, nothing it started survives).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence

import pytest

from tgi_server.testing import LaunchedService, is_running, launch_service, process_tree

# Small limits and coarse buckets: 18 shapes to warm up; Connected after 15-50 s here.
LIMITS_ARGV = (
    "--dtype", "float32",
    "--max-input-tokens", "256", "--max-total-tokens", "512",
    "--max-batch-prefill-tokens", "512", "--max-batch-size", "16",
)  # fmt: skip
BUCKETS_ENV = {
    "PAD_SEQUENCE_TO_MULTIPLE_OF": "256",
    "BATCH_BUCKET_SIZE": "16",
    "PREFILL_BATCH_BUCKET_SIZE": "16",
    "LOG_LEVEL": "info",
}

Launch = Callable[..., LaunchedService]
_STARTED: dict[str, LaunchedService] = {}  # by name, for the failure reports


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report shows the end of each service's log."""
    report: pytest.TestReport = yield
    if report.failed:
        for name, service in _STARTED.items():
            report.sections.append((f"launcher log: {name}", service.log()[-6000:]))
    return report


@pytest.fixture(scope="session")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launch]:
    """``launch(name, *argv, limits=..., environ={...})``: a launcher with ``limits``
    (``LIMITS_ARGV`` by default: the launcher refuses a flag given twice) and ``argv``;
    killed (with its children) at the end of the session if still running."""

    def start(
        name: str,
        *argv: str,
        limits: Sequence[str] = LIMITS_ARGV,
        environ: dict[str, str] | None = None,
    ) -> LaunchedService:
        log_path = tmp_path_factory.mktemp(name) / "launcher.log"
        service = launch_service(
            [*limits, *argv], log_path=log_path, environ={**BUCKETS_ENV, **(environ or {})}
        )
        print(f"\n{name}: Connected after {service.startup_s:.1f} s", file=sys.stderr)
        _STARTED[name] = service
        return service

    yield start
    for service in _STARTED.values():
        if service.process.poll() is None:
            service.kill()


def _stop_and_check(service: LaunchedService) -> None:
    tree = process_tree(service.pid)
    status = service.stop()
    survivors = [pid for pid in tree if is_running(pid)]
    assert (status, survivors) == (0, []), service.log()[-4000:]


@pytest.fixture(scope="session")
def stop_and_check() -> Callable[[LaunchedService], None]:
    """``stop_and_check(service)``: SIGTERM, exit 0, and nothing it started survives (a
    module stops its service when done, so that the next one has the cores)."""
    return _stop_and_check
