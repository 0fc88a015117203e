"""Stopping llama.cpp inside a decode: a cancelled call must free its instance at once, also in the middle of
a long prompt's prefill (one `llama_decode` of `n_batch` tokens takes minutes on a CPU).

llama.cpp reads an abort callback between the nodes of every graph it computes (`llama_set_abort_callback`)
and ends the decode when it returns true; the positions of the unfinished batch leave the KV cache, and the
decode returns 2 (llama-cpp-python raises RuntimeError). A Python callback would take the GIL at every node,
from llama.cpp's compute thread, and slow every token while the event loop runs; the callback here is libc's
`strlen` over a two-byte buffer instead: 0 (false) while the flag is clear, 1 (true) once it is set. Both
x86-64 and AArch64 return it in the register a `bool` is read from."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llama_cpp import Llama

_callback = None


def _strlen() -> object:
    global _callback
    if _callback is None:
        import llama_cpp

        _callback = ctypes.cast(ctypes.CDLL(None).strlen, llama_cpp.ggml_abort_callback)
    return _callback


class AbortFlag:
    """One model instance's flag: `set` stops the decode in progress (and every later one until `clear`)."""

    def __init__(self, llama: Llama):
        import llama_cpp

        self._buffer = ctypes.create_string_buffer(2)
        llama_cpp.llama_set_abort_callback(llama.ctx, _strlen(), ctypes.cast(self._buffer, ctypes.c_void_p))

    def set(self) -> None:
        self._buffer[0] = b"\x01"

    def clear(self) -> None:
        self._buffer[0] = b"\x00"

    @property
    def is_set(self) -> bool:
        return self._buffer[0] != b"\x00"
