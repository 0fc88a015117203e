"""A bounded reader of a GGUF file's header and tensor table, for the planner: it follows llama.cpp's
(ggml/src/gguf.cpp) and refuses what it refuses, but keeps only what the planner needs and checks every count
and length against the bytes left before it reads or allocates anything. (gguf.GGUFReader memory-maps the
file, builds a numpy array per array element and trusts the counts it reads: a hostile header made it
allocate gigabytes or raise IndexError, KeyError and RecursionError.)"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO


class GGUFError(ValueError):
    """A GGUF header the planner cannot read (most of them llama.cpp refuses too): one sentence naming the file."""

    def __init__(self, path: Path | str, what: str):
        super().__init__(f"{path}: {what}")
        self.what = what


class HeaderCut(GGUFError):
    """The header goes on past the bytes at hand (the first megabytes of a hub model)."""


GGUF_VERSIONS = (2, 3)
STRING, ARRAY = 8, 9
NUMBERS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
INTEGERS = frozenset({0, 1, 2, 3, 4, 5, 10, 11})
TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
              8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}
MAX_KEY = 65535
"""Bytes in a metadata key (the GGUF specification's limit)."""
MAX_TENSOR_NAME = 63
"""Bytes in a tensor name (llama.cpp's GGML_MAX_NAME, with its NUL)."""
MAX_ARRAY = 1 << 30
"""Elements in a metadata array (llama.cpp's GGUF_MAX_ARRAY_ELEMENTS)."""
MAX_ENTRIES = 1 << 16
"""Metadata keys, and tensors over all parts: the planner's limit, which bounds its memory (llama.cpp has none;
the largest models have a few thousand tensors)."""
KEPT = 256
"""Keys longer than this are no key the planner reads (only their duplicates are looked for), and string
values are kept up to this length."""
CHUNK = 1 << 20


class _Bytes:
    """A GGUF file read front to back through a bounded buffer; a read past the end of the file (or past
    `present`, the bytes that are really there) raises before anything is read."""

    def __init__(self, path: Path, f: BinaryIO, size: int, present: int):
        self.path, self.f, self.size, self.present = path, f, size, present
        self.buf, self.at, self.start = b"", 0, 0
        self.where = "the GGUF header"

    @property
    def offset(self) -> int:
        return self.start + self.at

    def check(self, n: int) -> None:
        if n > self.size - self.offset:
            raise GGUFError(self.path, f"the file ends inside {self.where} ({n} more bytes needed at byte "
                                       f"{self.offset} of {self.size})")
        if n > self.present - self.offset:
            raise HeaderCut(self.path, f"{self.where} goes on past the first {self.present} bytes")

    def take(self, n: int) -> bytes:
        self.check(n)
        if self.at + n > len(self.buf):
            self.start += self.at
            self.f.seek(self.start)
            self.buf, self.at = self.f.read(max(n, CHUNK)), 0
            if len(self.buf) < n:
                raise GGUFError(self.path, f"the file ends inside {self.where} (it changed while it was read)")
        self.at += n
        return self.buf[self.at - n:self.at]

    def number(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def skip(self, n: int) -> None:
        self.check(n)
        if self.at + n <= len(self.buf):
            self.at += n
        else:
            self.start, self.buf, self.at = self.offset + n, b"", 0

    def skip_strings(self, count: int) -> None:
        """`count` length-prefixed strings (a tokenizer's vocabulary: the bulk of most headers), skipped."""
        while count:
            buf, at = self.buf, self.at
            end = min(len(buf), self.present - self.start)
            while count and at + 8 <= end and at + 8 + (n := int.from_bytes(buf[at:at + 8], "little")) <= end:
                at, count = at + 8 + n, count - 1
            self.at = at
            if count:  # the next one crosses the buffer's end (or the file's): read it with every check
                self.skip(self.number("<Q"))
                count -= 1

    def string(self, limit: int) -> bytes:
        """A string's first `limit` bytes (the rest skipped)."""
        n = self.number("<Q")
        self.check(n)
        kept = self.take(min(n, limit))
        self.skip(n - len(kept))
        return kept


@dataclass
class Header:
    """What the planner reads of one GGUF file."""

    types: dict[str, int] = field(default_factory=dict)
    """The GGUF type of each key of at most KEPT bytes."""
    values: dict[str, Any] = field(default_factory=dict)
    """Their values: numbers, strings (bytes, cut at KEPT), the element count of arrays."""
    tensors: list[tuple[str, int, int]] = field(default_factory=list)
    """(name, elements, bytes) of each tensor."""


def shown(text: str) -> str:
    """Text from a file, safe to print: itself when plain, else quoted with escapes."""
    return text if text.isascii() and text.isprintable() and len(text) <= 80 else json.dumps(text[:80])


def read_header(path: Path, seen_tensors: set[str], present: int | None = None) -> Header:
    """The metadata and tensor table of one GGUF file, as llama.cpp reads them; GGUFError naming what it
    would refuse (or what exceeds the planner's bounds). `present`: the bytes really there (HeaderCut past
    them)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        b = _Bytes(path, f, size, size if present is None else min(present, size))
        if b.take(4) != b"GGUF":
            raise GGUFError(path, "not a GGUF file (it does not start with the GGUF magic bytes)")
        version = b.number("<I")
        if version not in GGUF_VERSIONS:
            raise GGUFError(path, f"GGUF version {version} is not one llama.cpp reads (2 or 3, little-endian)")
        n_tensors, n_keys = b.number("<q"), b.number("<q")
        for count, what in ((n_tensors, "tensors"), (n_keys, "metadata keys")):
            if not 0 <= count <= MAX_ENTRIES:
                raise GGUFError(path, f"the header counts {count} {what}; the planner reads 0 to {MAX_ENTRIES}")
        gguf = Header()
        seen_keys: set[bytes] = set()
        for i in range(n_keys):
            b.where = f"metadata key {i}"
            length = b.number("<Q")
            if not 1 <= length <= MAX_KEY:
                raise GGUFError(path, f"metadata key {i} is {length} bytes long; keys are 1 to {MAX_KEY} bytes long")
            raw = b.take(length)
            digest = hashlib.blake2b(raw, digest_size=16).digest()
            key = raw.decode("utf-8", "replace")
            if digest in seen_keys:
                raise GGUFError(path, f"the metadata key {shown(key)} appears twice")
            seen_keys.add(digest)
            b.where = f"the value of {shown(key)}"
            kind = b.number("<I")
            kept = length <= KEPT
            if kind == ARRAY:
                item, count = b.number("<I"), b.number("<Q")
                if item not in TYPE_NAMES or item == ARRAY:
                    raise GGUFError(path, f"{shown(key)} is an array of GGUF type {item}, which llama.cpp does not "
                                          "read")
                if count > MAX_ARRAY:
                    raise GGUFError(path, f"{shown(key)} is an array of {count} elements; llama.cpp reads at most "
                                          f"{MAX_ARRAY}")
                if item == STRING:
                    b.check(8 * count)
                    b.skip_strings(count)
                else:
                    b.skip(count * struct.calcsize(NUMBERS[item]))
                value: Any = count
            elif kind == STRING:
                value = b.string(KEPT)
            elif kind in NUMBERS:
                value = b.number(NUMBERS[kind])
            else:
                raise GGUFError(path, f"{shown(key)} has GGUF type {kind}, which llama.cpp does not read")
            if kept:
                gguf.types[key], gguf.values[key] = kind, value
        alignment = gguf.values.get("general.alignment", 32)
        if "general.alignment" in gguf.types and gguf.types["general.alignment"] != 4 or \
                alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(path, f"general.alignment must be a uint32 power of 2, got {alignment!r}")
        data_size = data_end = 0
        for i in range(n_tensors):
            b.where = f"tensor {i} of the tensor table"
            length = b.number("<Q")
            if length > MAX_TENSOR_NAME:
                raise GGUFError(path, f"tensor {i}'s name is {length} bytes long; llama.cpp takes at most "
                                      f"{MAX_TENSOR_NAME}")
            name = b.take(length).decode("utf-8", "replace")
            if name in seen_tensors:
                raise GGUFError(path, f"the tensor {shown(name)} appears twice")
            if len(seen_tensors) >= MAX_ENTRIES:
                raise GGUFError(path, f"the model has more than {MAX_ENTRIES} tensors, more than the planner reads")
            seen_tensors.add(name)
            b.where = f"the entry of tensor {shown(name)}"
            n_dims = b.number("<I")
            if n_dims > 4:
                raise GGUFError(path, f"tensor {shown(name)} has {n_dims} dimensions; llama.cpp takes at most 4")
            dims = [b.number("<q") for _ in range(n_dims)]
            elements = math.prod(dims)
            if min(dims, default=0) < 0 or elements >= 1 << 63:
                raise GGUFError(path, f"tensor {shown(name)} has the shape {dims}, which llama.cpp refuses")
            kind = b.number("<i")
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise GGUFError(path, f"tensor {shown(name)} has the unknown ggml type {kind}") from None
            if (row := dims[0] if dims else 1) % block:
                raise GGUFError(path, f"tensor {shown(name)} has rows of {row} elements, not a multiple of its "
                                      f"type's block of {block}")
            nbytes = elements // block * type_size
            offset = b.number("<Q")
            if offset != data_size:
                raise GGUFError(path, f"tensor {shown(name)} starts at byte {offset} of the data, where llama.cpp "
                                      f"expects byte {data_size}")
            data_end = offset + nbytes
            data_size += -(-nbytes // alignment) * alignment
            gguf.tensors.append((name, elements, nbytes))
        end = -(-b.offset // alignment) * alignment + data_end
        if n_tensors and end > size:
            raise GGUFError(path, f"the tensor data ends at byte {end}, past the end of the file ({size} bytes): "
                                  "the file is cut short")
    return gguf
