"""FP8 through Intel Neural Compressor (``QUANT_CONFIG``) on a tiny random Llama: MEASURE over
a few prompts writes statistics at ``close()``, QUANTIZE loads them and stays close to the
unquantized model, on one rank and on two shards (each rank its own statistics); the
config's errors. On the CPU INC runs its quantize-dequantize path (``use_qdq``), the same
patching as on Gaudi."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tgi_core.contract import StepPlan
from tgi_hpu_kernels.quantization import read_quant_config
from tgi_hpu_kernels.testing import prefill_plan

pytest.importorskip("neural_compressor.torch.quantization")

PROMPTS = ([5, 17, 33, 9, 41, 7, 3], [88, 12, 64, 101, 23], [2, 90, 14, 77, 31, 60, 8, 19, 44])
PROJECTIONS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def _write_config(folder: Path, mode: str, **extra: object) -> Path:
    """A maxabs config INC runs on the CPU: quantize-dequantize, host-side measurement."""
    config = {
        "method": "HOOKS",  # optimum-habana's configs carry it; INC ignores it
        "mode": mode,
        "observer": "maxabs",
        "scale_method": "maxabs_arbitrary",
        "allowlist": {"types": [], "names": []},
        "blocklist": {"types": [], "names": []},
        "dump_stats_path": str(folder / "hqt_output" / "measure"),
        "use_qdq": True,
        "measure_on_hpu": False,
        **extra,
    }
    path = folder / f"maxabs_{mode.lower()}.json"
    path.write_text(json.dumps(config))
    return path


def _plan() -> StepPlan:
    return prefill_plan(PROMPTS, blocks_per_sequence=4, batch_size=4, seq_len=16)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_measure_then_quantize_stays_close_to_the_model(
    tiny_checkpoint, make_runner, tmp_path, dtype
):
    folder = tiny_checkpoint("llama")[0]
    expected = make_runner(folder, dtype=dtype).compute_logits(_plan())

    measuring = make_runner(
        folder, dtype=dtype, quant_config=str(_write_config(tmp_path, "MEASURE"))
    )
    measuring.compute_logits(_plan())
    stats = tmp_path / "hqt_output"
    assert not list(stats.glob("measure*"))  # written at close, when the engine stops
    measuring.close()
    measured = json.loads((stats / "measure_hooks_maxabs_mod_list.json").read_text())
    # every projection measured: the bf16 fused decoder stack did not bypass the patched layers
    # (a set: INC's module list is process-global and grows with each MEASURE in a process)
    assert set(measured) == {f"model.layers.{i}.{name}" for i in range(2) for name in PROJECTIONS}
    assert (stats / "measure_hooks_maxabs.npz").is_file()

    quantized = make_runner(
        folder, dtype=dtype, quant_config=str(_write_config(tmp_path, "QUANTIZE"))
    )
    modules = dict(quantized._model.named_modules())
    for i in range(2):
        for name in PROJECTIONS:
            layer = modules[f"model.layers.{i}.{name}"]
            assert type(layer).__name__ == "PatchedLinear"
            assert layer.weight.dtype == torch.float8_e4m3fn
    assert type(modules["lm_head"]).__name__ == "LMHead"  # the head stays in the model's dtype

    # measured: cosine >= 0.996, max |diff| 0.09-0.11 on logits up to 1.5 (both dtypes)
    logits = quantized.compute_logits(_plan())
    assert torch.nn.functional.cosine_similarity(logits, expected).min() > 0.99
    error = (logits - expected).abs().max()
    assert 0 < error < 0.1 * expected.abs().max()  # the FP8 rounding is there, and small
    # a random model's top logits lie close: FP8 may swap the first two, never more
    top2 = expected.topk(2, dim=-1).indices
    assert (top2 == logits.argmax(-1, keepdim=True)).any(-1).all()


@pytest.fixture
def forget_inc_rank(monkeypatch):
    """INC reads this process's rank from torch.distributed once and keeps it: ``forget()``
    makes it read again (a single rank then names its files without a rank suffix), and the
    test's end restores its state from before (later tests see no rank either)."""
    from neural_compressor.torch.algorithms.fp8_quant.prepare_quant import prepare_model

    names = ("_local_rank", "_world_size", "_local_rank_initialized", "_world_size_initialized")
    for name in names:  # the state to restore at the end
        monkeypatch.setattr(prepare_model, name, getattr(prepare_model, name))

    def forget() -> None:
        for name in ("_local_rank", "_world_size"):
            monkeypatch.setattr(prepare_model, name, -1)
            monkeypatch.setattr(prepare_model, f"{name}_initialized", False)

    return forget


@pytest.mark.slow  # a shard process per runner
def test_two_shards_measure_and_quantize_their_own_slices(
    tiny_checkpoint, make_runner, sharded_runner, tmp_path, forget_inc_rank
):
    """Each rank (rank 1 a child process) measures its slice into its own files, INC's
    ``_<rank>_<num_shard>`` suffix, and quantizes from them; the logits stay as close to the
    unquantized model's as one rank's do (2 unquantized shards give 1 rank's logits:
    test_parallel.py)."""
    folder = tiny_checkpoint("llama")[0]
    expected = make_runner(folder).compute_logits(_plan())
    with sharded_runner(folder, quant_config=str(_write_config(tmp_path, "MEASURE"))) as (
        runner,
        _,
    ):
        runner.compute_logits(_plan())
    stats = tmp_path / "hqt_output"
    measured = {}
    for rank in (0, 1):
        names = json.loads((stats / f"measure_hooks_maxabs_{rank}_2_mod_list.json").read_text())
        assert set(names) == {f"model.layers.{i}.{p}" for i in range(2) for p in PROJECTIONS}
        measured[rank] = json.loads((stats / f"measure_hooks_maxabs_{rank}_2.json").read_text())
        assert measured[rank]["LocalRank"] == rank
    assert not list(stats.glob("measure_hooks_maxabs.*"))  # no unsuffixed, single-rank file
    # each rank observed its own slice (weights' max-abs differ: not one rank's copy)
    assert measured[0]["Nodes"] != measured[1]["Nodes"]

    quantize = str(_write_config(tmp_path, "QUANTIZE"))
    with sharded_runner(folder, quant_config=quantize) as (runner, _):
        assert runner.weights == "FP8 projections, dense LM head (QUANT_CONFIG)"
        logits = runner.compute_logits(_plan())
    # INC writes the scales each rank computed from its statistics while converting
    for rank in (0, 1):
        assert (stats / f"measure_hooks_maxabs_MAXABS_ARBITRARY_{rank}_2.npz").is_file()
    # the single-rank test's bounds (float32)
    assert torch.nn.functional.cosine_similarity(logits, expected).min() > 0.99
    error = (logits - expected).abs().max()
    assert 0 < error < 0.1 * expected.abs().max()
    top2 = expected.topk(2, dim=-1).indices
    assert (top2 == logits.argmax(-1, keepdim=True)).any(-1).all()
    # statistics measured on 2 shards are no single rank's
    forget_inc_rank()
    with pytest.raises(ValueError, match=r"with the same --num-shard"):
        make_runner(folder, quant_config=quantize)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"^QUANT_CONFIG=.*nope\.json: no such file$"):
        read_quant_config(tmp_path / "nope.json")


def test_invalid_json_is_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"mode": "MEASURE",')
    with pytest.raises(ValueError, match=r"^QUANT_CONFIG=.*broken\.json: invalid JSON"):
        read_quant_config(path)


def test_an_unknown_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'mode' must be one of MEASURE, QUANTIZE, got 'LOAD'"):
        read_quant_config(_write_config(tmp_path, "LOAD"))


def test_quantize_without_measurements_says_to_measure_first(
    tiny_checkpoint, make_runner, tmp_path
):
    config = _write_config(tmp_path, "QUANTIZE")
    with pytest.raises(ValueError, match=r"QUANTIZE needs the statistics of a MEASURE run"):
        make_runner(tiny_checkpoint("llama")[0], quant_config=str(config))


def test_an_hp_dtype_other_than_the_models_is_refused(tiny_checkpoint, make_runner, tmp_path):
    config = _write_config(tmp_path, "MEASURE", hp_dtype="bf16")
    with pytest.raises(ValueError, match="hp_dtype 'bf16' differs from the model's dtype 'fp32'"):
        make_runner(tiny_checkpoint("llama")[0], quant_config=str(config))
