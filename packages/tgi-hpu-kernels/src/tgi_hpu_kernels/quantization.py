"""FP8 inference through Intel Neural Compressor (INC): ``QUANT_CONFIG``, or ``--quantize fp8``.

TGI-Gaudi's two steps: a ``"mode": "MEASURE"`` config makes INC observe every patched layer's
activations while traffic runs, and ``finalize()`` (called when the engine stops) writes the
statistics under the config's ``dump_stats_path``; a ``"mode": "QUANTIZE"`` config then loads
those statistics and swaps the layers for FP8 ones. INC patches modules by class name: the
decoder layers' ``Linear`` projections (q/k/v, o, gate/up, down) become ``PatchedLinear``; the
LM head (``LMHead``), embeddings and norms stay in the model's dtype.

``--quantize fp8`` (``apply_fp8_dynamic``) converts the same layers at load with no statistics.
With ``--num-shard`` > 1 every rank quantizes its own slice: INC reads the rank from
torch.distributed and suffixes that rank's files with ``_<rank>_<num_shard>``.

``neural_compressor`` is imported only when one of the two asks for it. What the layers run on
(Gaudi FP8 matmuls, or quantize-dequantize in the model's dtype with ``use_qdq``) is the
config's business, not this module's. ``check_quantize`` and ``fp8_at_load`` are what the
runner calls; the weight-only methods (int8/int4) are the loader's (``loader/quantize.py``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.layers.quantized import QuantizedKernels
from tgi_hpu_kernels.loader.quantize import PREQUANTIZED, WEIGHT_ONLY

__all__ = [
    "QUANT_MODES",
    "FP8Quantization",
    "apply_fp8_dynamic",
    "apply_quant_config",
    "check_quantize",
    "fp8_at_load",
    "read_quant_config",
]

logger = logging.getLogger(__name__)

QUANT_MODES = ("MEASURE", "QUANTIZE")

# INC's names for the precision its quantize-dequantize and unpatched math run in
_HP_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


_FP8_DEVICES = ("hpu", "cpu")  # INC's FP8: Gaudi matmuls, or QDQ on the CPU


def check_quantize(settings: RunnerSettings, kernels: QuantizedKernels) -> None:
    """Refuses, before anything loads, a ``--quantize`` (or ``--gguf-weights quantized``) the
    device (``kernels``: what its weight-only kernels take) cannot serve.

    Raises:
        ValueError: one line naming the method and the device.
    """
    device_name = kernels.device
    if settings.gguf_weights == "quantized" and not kernels.bits:
        raise ValueError(
            f"--gguf-weights quantized: no weight-only int8/int4 kernels on {device_name}"
        )
    method = settings.quantize
    if method is None:
        return
    where = f"--quantize {method}"
    if method == "fp8":
        if device_name not in _FP8_DEVICES:
            raise ValueError(
                f"{where}: Intel Neural Compressor's FP8 runs on hpu and cpu, not {device_name}"
            )
        if settings.quant_config:
            raise ValueError(f"{where} and QUANT_CONFIG both ask for FP8: set one of them")
    elif method in (*WEIGHT_ONLY, *PREQUANTIZED):
        bits = WEIGHT_ONLY[method].bits if method in WEIGHT_ONLY else 4
        if bits not in kernels.bits:
            raise ValueError(f"{where}: no weight-only int{bits} kernels on {device_name}")
    else:
        raise ValueError(f"{where}: no {method} kernels on {device_name}")


def fp8_at_load(
    model: nn.Module, settings: RunnerSettings, dtype: torch.dtype, device_name: str
) -> FP8Quantization | None:
    """INC's FP8 per ``QUANT_CONFIG`` or ``--quantize fp8`` (QDQ on the CPU), else None."""
    if settings.quant_config:
        return apply_quant_config(model, settings.quant_config, dtype)
    if settings.quantize == "fp8":
        return apply_fp8_dynamic(model, dtype, use_qdq=device_name == "cpu")
    return None


def read_quant_config(path: str | Path) -> dict[str, Any]:
    """The JSON object at ``path``, with a ``mode`` of ``QUANT_MODES``.

    Raises:
        ValueError: a missing or unreadable file, invalid JSON, not an object, another mode
            (one line naming QUANT_CONFIG and the path).
    """
    where = f"QUANT_CONFIG={path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{where}: cannot read the file: {exc.strerror}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: invalid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(config).__name__}")
    mode = config.get("mode")
    if mode not in QUANT_MODES:
        raise ValueError(f"{where}: 'mode' must be one of {', '.join(QUANT_MODES)}, got {mode!r}")
    return config


class FP8Quantization:
    """INC applied to a model: ``finalize()`` writes a MEASURE run's statistics (once).

    ``path`` is the ``QUANT_CONFIG`` file, None for ``--quantize fp8``.
    """

    def __init__(self, model: nn.Module, path: Path | None, config: dict[str, Any]) -> None:
        self.model = model
        self.path = path
        self.mode: str = config["mode"]
        self.dump_stats_path = str(config.get("dump_stats_path", "./hqt_output/measure"))
        self._finalized = False

    def finalize(self) -> None:
        """MEASURE: write the observed statistics under ``dump_stats_path``; QUANTIZE: nothing."""
        if self.mode != "MEASURE" or self._finalized:
            return
        self._finalized = True
        from neural_compressor.torch.quantization import finalize_calibration

        finalize_calibration(self.model)
        logger.info("FP8 measurements written to %s*", self.dump_stats_path)


def apply_quant_config(model: nn.Module, path: str | Path, dtype: torch.dtype) -> FP8Quantization:
    """Prepares (MEASURE) or converts (QUANTIZE) ``model`` in place per the config at ``path``.

    ``hp_dtype`` defaults to ``dtype`` (the model's): INC's patched layers answer in it.

    Raises:
        ValueError: see ``read_quant_config``; INC not installed; an ``hp_dtype`` other than
            the model's; QUANTIZE without statistics for every patched layer.
    """
    path = Path(path)
    config = read_quant_config(path)
    where = f"QUANT_CONFIG={path}"
    _set_hp_dtype(config, dtype, where)
    config_class, prepare, convert = _import_inc(where)
    _run_layer_by_layer(model)
    fp8_config = config_class.from_dict(config)
    if config["mode"] == "MEASURE":
        prepare(model, fp8_config)
    else:
        _convert(model, fp8_config, convert, where)
    logger.info("%s: FP8 %s on %d layers", where, config["mode"], _num_patched(model))
    return FP8Quantization(model, path, config)


def apply_fp8_dynamic(model: nn.Module, dtype: torch.dtype, *, use_qdq: bool) -> FP8Quantization:
    """``--quantize fp8``: converts ``model``'s decoder ``Linear`` layers to FP8 E4M3 in place,
    with no measurement run and no statistics file (INC QUANTIZE mode, ``hp_dtype`` = ``dtype``).

    Scales: INC's ``unit_scale`` (1 for every weight and activation), not per-step dynamic
    scales. INC 3.10 refuses ``dynamic_quantization`` with ``use_qdq`` and on the CPU ("not
    supported for qdq and fake quant", "CPU device doesn't support dynamic quantization"), and
    the CPU runs QDQ only; its other measurement-free method, ``hw_aligned_single_scale``, looks
    its scale up per Gaudi generation and fails elsewhere. With a scale of 1, weights and
    activations beyond +-448 saturate and those below 2**-9 round to zero.

    Args:
        use_qdq: quantize-dequantize in ``dtype`` (the layers' matmuls stay in ``dtype``);
            must be True on the CPU, where INC has no FP8 matmul.

    Raises:
        ValueError: INC not installed; a model dtype other than bfloat16, float16, float32;
            INC refusing the config (``use_qdq=False`` on the CPU).
    """
    where = "--quantize fp8"
    config: dict[str, Any] = {"mode": "QUANTIZE", "scale_method": "unit_scale", "use_qdq": use_qdq}
    _set_hp_dtype(config, dtype, where)
    config_class, _, convert = _import_inc(where)
    _run_layer_by_layer(model)
    try:
        convert(model, config_class.from_dict(config))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    logger.info("%s: FP8 (unit scales) on %d layers", where, _num_patched(model))
    return FP8Quantization(model, None, config)


def _run_layer_by_layer(model: nn.Module) -> None:
    # The device's fused decoder stack reads the weights itself and would bypass the
    # patched layers (nothing measured, nothing quantized): run layer by layer instead.
    for module in model.modules():
        if hasattr(module, "fuse_layers"):
            cast(Any, module).fuse_layers = False


def _set_hp_dtype(config: dict[str, Any], dtype: torch.dtype, where: str) -> None:
    hp_dtype = _HP_DTYPES.get(dtype)
    if hp_dtype is None:
        raise ValueError(f"{where}: FP8 needs a bfloat16, float16 or float32 model, not {dtype}")
    config.setdefault("hp_dtype", hp_dtype)
    if str(config["hp_dtype"]).lower() != hp_dtype:
        raise ValueError(
            f"{where}: hp_dtype {config['hp_dtype']!r} differs from the model's dtype {hp_dtype!r}"
        )


def _import_inc(where: str) -> tuple[Any, Any, Any]:
    """INC's ``FP8Config``, ``prepare`` and ``convert``, imported only when asked for."""
    try:
        from neural_compressor.torch.quantization import FP8Config, convert, prepare
    except ImportError as exc:
        raise ValueError(
            f"{where}: Intel Neural Compressor is not installed ({exc}); "
            "pip install neural-compressor-pt (Gaudi images ship it)"
        ) from None
    return FP8Config, prepare, convert


def _convert(model: nn.Module, fp8_config: Any, convert: Any, where: str) -> None:
    try:
        convert(model, fp8_config)
    except FileNotFoundError as exc:
        raise ValueError(
            f"{where}: QUANTIZE needs the statistics of a MEASURE run ({exc}); serve traffic "
            "with a MEASURE config first, with the same --num-shard (each rank has its own)"
        ) from None
    unmeasured = [
        name
        for name, module in model.named_modules()
        if type(module).__name__ == "PatchedUnmeasuredModule"
    ]
    if unmeasured:
        raise ValueError(
            f"{where}: the statistics have no measurements for {len(unmeasured)} layers "
            f"(e.g. {unmeasured[0]}): measure this model with a MEASURE config first"
        )


def _num_patched(model: nn.Module) -> int:
    return sum(type(m).__name__.startswith("Patched") for m in model.modules())
