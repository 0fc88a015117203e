"""Saved KV states of earlier prompts, per model instance (`prompt_cache_mb`).

llama.cpp keeps one prompt in an instance's KV cache, so a call that shares its prefix skips
re-processing it. Two agents that alternate on one instance (each resending its own long system
prompt) evict each other every call. This keeps the KV state of recent long prompts (sequence 0 only,
through llama.cpp's state API, without llama-cpp-python's logits copy) and restores the one that
shares most with a new prompt before generating; `Llama.generate` then evaluates only the rest.

Runs on the instance's own thread, like everything that touches its Llama object.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from ..compat import llama_cpp as compat

if TYPE_CHECKING:
    from llama_cpp import Llama

MIN_TOKENS = 256
"""Shorter prompts are cheap to process again; their states are not kept."""
MIN_GAIN = 64
"""Restore only when a saved state shares this many more tokens than the live KV cache."""
COVERED = 0.9
"""A prompt that shares this share of its tokens with a saved state is not saved again."""


def shared_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class PromptStates:
    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = capacity_bytes
        self._states: OrderedDict[bytes, tuple[np.ndarray, ctypes.Array[ctypes.c_uint8]]] = OrderedDict()
        self.size_bytes = 0
        self.restores = 0
        self.saves = 0

    def restore_best(self, llama: Llama, tokens: list[int]) -> int:
        """Load the saved state sharing most with `tokens` if it beats the live cache; returns the
        number of prompt tokens already processed either way."""
        import llama_cpp

        wanted = np.asarray(tokens, dtype=np.intc)
        live = shared_prefix(llama.input_ids[: llama.n_tokens], wanted)
        best_key, best = None, live + MIN_GAIN - 1
        for key, (ids, _) in self._states.items():
            if (shared := shared_prefix(ids, wanted)) > best:
                best_key, best = key, shared
        if best_key is None:
            return live
        ids, data = self._states[best_key]
        self._states.move_to_end(best_key)
        compat.kv_cache_clear(llama)
        if llama_cpp.llama_state_seq_set_data(llama.ctx, data, len(data), 0) == 0:
            llama.n_tokens = 0  # the cache is empty now: generate processes the whole prompt
            return 0
        llama.input_ids[: len(ids)] = ids
        llama.n_tokens = len(ids)
        compat.logits_stale(llama)  # the logits are not restored: generate evaluates at least one token
        self.restores += 1
        return best

    def save(self, llama: Llama, prompt_tokens: int) -> None:
        """Keep the live KV state (the prompt and the answer to it) unless it is short or already kept."""
        import llama_cpp

        if prompt_tokens < MIN_TOKENS or self.capacity_bytes == 0:
            return
        ids = llama.input_ids[: llama.n_tokens].copy()
        if any(shared_prefix(saved, ids[:prompt_tokens]) >= COVERED * prompt_tokens for saved, _ in self._states.values()):
            return
        size = llama_cpp.llama_state_seq_get_size(llama.ctx, 0)
        if size > self.capacity_bytes:
            return
        data = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(llama.ctx, data, size, 0) != size:
            return
        self._states[ids.tobytes()] = (ids, data)
        self.size_bytes += size
        self.saves += 1
        while self.size_bytes > self.capacity_bytes:
            _, (_, dropped) = self._states.popitem(last=False)
            self.size_bytes -= len(dropped)
