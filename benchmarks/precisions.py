"""The same weights in other precisions: a quantized GGUF rewritten with F16 or BF16 tensors.

Every quantized tensor is dequantized (``gguf.quants.dequantize``) and stored as F16 or BF16;
F32 tensors (the norms) and every metadata field, tokenizer and chat template included, are
copied unchanged. So llama.cpp can run the very weights our server dequantizes from the Q4_1
GGUF, in an unquantized precision, and the comparison is like for like.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

__all__ = ["PRECISIONS", "cached_precision", "convert", "native_bf16"]

PRECISIONS = {
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
}
# CPU flags that give llama.cpp (and torch) native bf16 arithmetic.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(flags: set[str]) -> bool:
    return any(flag in flags for flag in BF16_FLAGS)


def convert(source: Path, target: Path, precision: str) -> None:
    """Writes ``source`` with its quantized tensors in ``precision`` ("f16" or "bf16")."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    qtype, file_type = PRECISIONS[precision]
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    partial = target.with_name(target.name + ".partial")  # never a half-written cached file
    writer = gguf.GGUFWriter(partial, arch=arch)
    for field in reader.fields.values():
        # GGUF.* are the reader's virtual fields; the writer adds the architecture itself.
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(file_type)
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    for tensor in reader.tensors:
        if tensor.tensor_type in (gguf.GGMLQuantizationType.F32, qtype):
            writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        stored = gguf.quants.quantize(values, qtype)
        writer.add_tensor(tensor.name, stored, raw_shape=stored.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(target)


def cached_precision(source: Path, precision: str, cache: Path) -> Path:
    """``source`` in ``precision``, converted once into ``cache`` (keyed by name and size)."""
    target = cache / f"{source.stem}.{source.stat().st_size}.{precision.upper()}.gguf"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"== converting {source.name} to {precision} -> {target}", flush=True)
        convert(source, target, precision)
    return target
