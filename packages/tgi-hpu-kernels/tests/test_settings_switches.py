"""The runner-side settings that change what loads or which kernels run:
--disable-custom-kernels (torch ops instead of the native CPU kernels) and HF_HUB_OFFLINE
(the hub's cache only, no request at all)."""

from __future__ import annotations

import contextlib
import http.server
import shutil
import threading
from collections.abc import Iterator

import huggingface_hub.constants
import pytest

from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels import TorchModelRunner
from tgi_hpu_kernels.device import select_device
from tgi_hpu_kernels.device.cpu import CpuDevice
from tgi_hpu_kernels.device.cpu_native import native_kernels
from tgi_hpu_kernels.loader import ModelLoadError, resolve_source

REPO = "tgi-gaudi-tests/tiny-offline"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_disable_custom_kernels_runs_torch_ops(tiny_checkpoint):
    if native_kernels() is None:
        pytest.skip("no C compiler: the native kernels never build here")
    folder, _ = tiny_checkpoint("mistral")
    values = {"model_id": str(folder), "dtype": "float32", "device": "cpu", "block_size": 4}
    native = TorchModelRunner(RunnerSettings(**values, max_total_tokens=128), num_kv_blocks=8)
    plain = TorchModelRunner(
        RunnerSettings(**values, max_total_tokens=128, disable_custom_kernels=True),
        num_kv_blocks=8,
    )
    assert isinstance(native.device, CpuDevice) and isinstance(plain.device, CpuDevice)
    assert native.device.native is not None
    assert plain.device.native is None
    device = select_device("cpu", RunnerSettings(disable_custom_kernels=True))
    assert isinstance(device, CpuDevice) and device.native is None


class _Counting(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_error(500)

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def counting_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Counting]]:
    """A hub endpoint on 127.0.0.1 that counts the requests it gets (and fails them)."""
    _Counting.hits = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(
        huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}"
    )
    yield _Counting
    server.shutdown()
    server.server_close()


def test_hf_hub_offline_reads_the_cache_without_a_request(tiny_checkpoint, tmp_path, counting_hub):
    folder, _ = tiny_checkpoint("mistral")
    repo = tmp_path / ("models--" + REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    settings = RunnerSettings(
        model_id=REPO, huggingface_hub_cache=str(tmp_path), hf_hub_offline=True
    )
    source = resolve_source(settings)
    assert (source.kind, source.path) == ("safetensors", repo / "snapshots" / COMMIT)
    assert counting_hub.hits == 0
    missing = RunnerSettings(
        model_id="tgi-gaudi-tests/absent", huggingface_hub_cache=str(tmp_path), hf_hub_offline=True
    )
    with pytest.raises(ModelLoadError, match="could not be fetched"):
        resolve_source(missing)
    assert counting_hub.hits == 0
    # Online, the same cache is checked against the hub first.
    with contextlib.suppress(ModelLoadError):  # whether it then falls back to the cache
        resolve_source(RunnerSettings(model_id=REPO, huggingface_hub_cache=str(tmp_path)))
    assert counting_hub.hits > 0
