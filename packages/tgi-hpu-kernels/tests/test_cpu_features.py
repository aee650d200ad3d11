"""The CPU's features choose the compute dtype: bfloat16 where the CPU has it natively
(AVX-512 BF16, AMX), float32 elsewhere; an explicit dtype is honoured, with a warning when
it is emulated."""

from __future__ import annotations

import logging

import pytest
import torch

from tgi_core.settings import Settings
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels import TorchModelRunner
from tgi_hpu_kernels.device import resolve_dtype
from tgi_hpu_kernels.device.cpu import CpuDevice
from tgi_hpu_kernels.device.cpu_features import (
    CpuFeatures,
    choose_dtype,
    dtype_warning,
    host_cpu_features,
)

ZEN3 = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2"
ZEN4 = f"{ZEN3} avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni"
SAPPHIRE_RAPIDS = f"{ZEN4} amx_bf16 amx_tile amx_int8"


def cpuinfo(model: str, flags: str) -> str:
    """Two processors, as /proc/cpuinfo lists them (the first one is read)."""
    block = f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
    return block + block.replace("processor\t: 0", "processor\t: 1")


def features(flags: str) -> CpuFeatures:
    return CpuFeatures.parse(cpuinfo("Test CPU", flags))


def test_flags_are_read_from_cpuinfo() -> None:
    zen3 = CpuFeatures.parse(cpuinfo("AMD EPYC 7B13 64-Core Processor", ZEN3))
    assert zen3.model == "AMD EPYC 7B13 64-Core Processor"
    assert zen3.flags == {"avx2", "fma"}
    assert zen3.describe() == "AMD EPYC 7B13 64-Core Processor [avx2 fma]"
    assert features(SAPPHIRE_RAPIDS).flags == {
        "avx2",
        "fma",
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
        "amx_bf16",
        "amx_tile",
    }


def test_without_cpuinfo_torch_capability_is_trusted() -> None:
    assert CpuFeatures.parse("", "AVX2").flags == {"avx2", "fma"}
    assert CpuFeatures.parse("", "AVX512").native_bf16 is False
    assert CpuFeatures.parse("", "AMX").native_bf16 is True


@pytest.mark.parametrize(
    ("flags", "dtype"),
    [(ZEN3, "float32"), (ZEN4, "bfloat16"), (SAPPHIRE_RAPIDS, "bfloat16"), ("sse2", "float32")],
)
def test_unset_dtype_follows_native_bf16(flags: str, dtype: str) -> None:
    assert choose_dtype(features(flags), None) == dtype
    assert CpuDevice(use_native=False, features=features(flags)).default_dtype() == dtype


def test_explicit_dtype_is_honoured_and_emulated_bf16_warned() -> None:
    zen3, zen4 = features(ZEN3), features(ZEN4)
    assert choose_dtype(zen3, "bfloat16") == "bfloat16"
    assert choose_dtype(zen4, "float32") == "float32"
    warning = dtype_warning(zen3, "bfloat16")
    assert warning is not None and "2.5x slower" in warning and "[avx2 fma]" in warning
    assert dtype_warning(zen3, "float32") is None
    assert dtype_warning(zen4, "bfloat16") is None


def test_settings_leave_the_dtype_to_the_device() -> None:
    settings = Settings.from_sources([], {}).runner()
    assert settings.dtype == "auto"
    avx2 = CpuDevice(use_native=False, features=features(ZEN3))
    assert resolve_dtype(settings, avx2).dtype == "float32"
    explicit = Settings.from_sources(["--dtype", "bfloat16"], {}).runner()
    assert resolve_dtype(explicit, avx2).dtype == "bfloat16"


def test_host_features_agree_with_torch() -> None:
    host = host_cpu_features()
    capability = torch.backends.cpu.get_cpu_capability()
    assert host.torch_capability == capability
    if capability in ("AVX2", "AVX512"):
        assert "avx2" in host.flags
    if capability == "AVX512":
        assert "avx512f" in host.flags


def test_runner_on_an_avx2_cpu(tiny_checkpoint, caplog: pytest.LogCaptureFixture) -> None:
    folder = tiny_checkpoint("llama")[0]

    def runner(dtype: str) -> TorchModelRunner:
        settings = RunnerSettings(
            model_id=str(folder),
            dtype=dtype,  # type: ignore[arg-type]
            device="cpu",
            block_size=4,
            max_total_tokens=64,
        )
        device = CpuDevice(use_native=False, features=features(ZEN3))
        return TorchModelRunner(settings, device=device, num_kv_blocks=16)

    with caplog.at_level(logging.INFO, logger="tgi_hpu_kernels.runner"):
        assert runner("auto").dtype == torch.float32
    ours = [r for r in caplog.records if r.name.startswith("tgi_hpu_kernels")]
    assert not [r for r in ours if r.levelno >= logging.WARNING]
    started = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("model"))
    assert "float32" in started and "Test CPU [avx2 fma]" in started and "torch ops" in started
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tgi_hpu_kernels.runner"):
        assert runner("bfloat16").dtype == torch.bfloat16
    assert any("expect ~2.5x slower" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("flags", "limit", "fused"), [(ZEN4, 32, 32), (SAPPHIRE_RAPIDS, 4, 12)])
def test_amx_hands_matmuls_over_4_rows_to_onednn(flags: str, limit: int, fused: int) -> None:
    """With AMX, oneDNN's tile GEMM beats the native bf16 kernel from 5 rows on (3x at 32):
    the native kernel takes only what it wins, the fused decode (which saves Python) a bit
    more."""
    device = CpuDevice(features=features(flags))
    if device.native is None or not device.native.fast_bf16:
        pytest.skip("no AVX512-BF16 native kernels on this machine")
    assert (device.native_linear_max_rows, device.fused_max_rows) == (limit, fused)
    assert f"matmuls up to {limit} rows, oneDNN" in device.kernels
    assert f"fused decode up to {fused} rows" in device.kernels
    assert ("(32 with int4/int8 weights)" in device.kernels) == (fused != 32)
    assert ("oneDNN (AMX) above" in device.kernels) == (limit == 4)
    weight = torch.randn(96, 64, dtype=torch.bfloat16)
    for rows in (limit, limit + 1):
        x = torch.randn(rows, 64, dtype=torch.bfloat16)
        with torch.profiler.profile() as profile:
            out = device.linear(x, weight, None)
        ran = {event.key for event in profile.key_averages()}
        assert ("native::linear" in ran) == (rows == limit)
        torch.testing.assert_close(out, torch.nn.functional.linear(x, weight))
