"""Read the key/value metadata of a GGUF file, without touching its tensors.

``gguf.GGUFReader`` parses every field into numpy views, which takes ~2 s on a vocabulary of
50 k tokens and 50 k merges; an HTTP worker only needs the metadata, so this reads the
key/value section with ``struct`` straight from a memory map (~0.1 s). The type codes and the
magic number come from the ``gguf`` package. Tensor data and tensor infos are never read.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import TypeAlias

from gguf import GGUF_MAGIC, GGUFValueType

__all__ = ["GGUFMetadataError", "GGUFValue", "read_gguf_metadata"]

GGUFValue: TypeAlias = "int | float | bool | str | list[GGUFValue]"

_SUPPORTED_VERSIONS = (2, 3)
_SCALAR_FORMATS: dict[int, str] = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}


class GGUFMetadataError(ValueError):
    """The file is not a GGUF file this reader understands."""


class _Cursor:
    """A read position in the mapped file, in the file's byte order."""

    def __init__(self, buffer: mmap.mmap, order: str, offset: int) -> None:
        self.buffer = buffer
        self.order = order
        self.offset = offset

    def unpack(self, fmt: str) -> tuple[int | float | bool, ...]:
        full = self.order + fmt
        values = struct.unpack_from(full, self.buffer, self.offset)
        self.offset += struct.calcsize(full)
        return values

    def string(self) -> str:
        (length,) = self.unpack("Q")
        start = self.offset
        self.offset += int(length)
        return self.buffer[start : self.offset].decode("utf-8")

    def value(self, value_type: int) -> GGUFValue:
        if value_type == GGUFValueType.STRING:
            return self.string()
        if value_type == GGUFValueType.ARRAY:
            (item_type, count) = self.unpack("IQ")
            return self.array(int(item_type), int(count))
        fmt = _SCALAR_FORMATS.get(value_type)
        if fmt is None:
            raise GGUFMetadataError(f"unknown GGUF value type {value_type}")
        return self.unpack(fmt)[0]

    def array(self, item_type: int, count: int) -> list[GGUFValue]:
        if item_type == GGUFValueType.STRING:
            return [self.string() for _ in range(count)]
        fmt = _SCALAR_FORMATS.get(item_type)
        if fmt is None:  # nested arrays: rare, read one by one
            return [self.value(item_type) for _ in range(count)]
        return list(self.unpack(f"{count}{fmt}"))


def read_gguf_metadata(path: str | Path) -> dict[str, GGUFValue]:
    """Return every metadata key of the GGUF file at ``path`` with its decoded value.

    Raises:
        GGUFMetadataError: not a GGUF file, an unsupported version, or a corrupt header.
        OSError: the file cannot be opened.
    """
    with Path(path).open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if len(buf) < 24 or struct.unpack_from("<I", buf, 0)[0] != GGUF_MAGIC:
            raise GGUFMetadataError(f"{path} is not a GGUF file (bad magic number)")
        order = "<"
        (version,) = struct.unpack_from("<I", buf, 4)
        if version & 0xFFFF == 0:  # written on a machine of the other byte order
            order = ">"
            (version,) = struct.unpack_from(">I", buf, 4)
        if version not in _SUPPORTED_VERSIONS:
            raise GGUFMetadataError(f"{path}: unsupported GGUF version {version}")
        cursor = _Cursor(buf, order, 8)
        (_num_tensors, num_kv) = cursor.unpack("QQ")
        metadata: dict[str, GGUFValue] = {}
        try:
            for _ in range(int(num_kv)):
                key = cursor.string()
                (value_type,) = cursor.unpack("I")
                metadata[key] = cursor.value(int(value_type))
        except (struct.error, UnicodeDecodeError) as exc:
            raise GGUFMetadataError(f"{path}: corrupt GGUF metadata ({exc})") from exc
        return metadata
