#!/usr/bin/env python
"""A GGUF with the metadata and tensor table of a large model and no weights (a sparse file: the data
section reads as zeros and takes no disk), for `mcp-tiered plan` on models this machine cannot hold or
fetch. llama.cpp would load it and compute garbage; the planner reads only the header.

    synth_shape.py SHAPE OUT.gguf      SHAPE: one of llama-13b, codellama-34b, llama-70b (Q4_K_M-like)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES

# (hidden, layers, ffn, heads, kv heads, vocab, trained context): the published configurations.
SHAPES = {
    "llama-13b": (5120, 40, 13824, 40, 40, 32000, 4096),
    "codellama-34b": (8192, 48, 22016, 64, 8, 32000, 16384),
    "llama-70b": (8192, 80, 28672, 64, 8, 32000, 4096),
}
Q4_K, Q6_K, F32 = GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K, GGMLQuantizationType.F32


def nbytes(shape: tuple[int, ...], kind: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[kind]
    return int(np.prod(shape)) // block * size


def write(name: str, out: Path) -> None:
    d, layers, ff, heads, kv_heads, vocab, context = SHAPES[name]
    head_dim = d // heads
    writer = GGUFWriter(str(out), "llama")
    writer.add_name(name)
    writer.add_block_count(layers)
    writer.add_context_length(context)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(15)  # MOSTLY_Q4_K_M
    tensors = [("token_embd.weight", (vocab, d), Q4_K), ("output_norm.weight", (d,), F32),
               ("output.weight", (vocab, d), Q6_K)]
    for i in range(layers):
        tensors += [(f"blk.{i}.attn_norm.weight", (d,), F32), (f"blk.{i}.ffn_norm.weight", (d,), F32),
                    (f"blk.{i}.attn_q.weight", (d, d), Q4_K), (f"blk.{i}.attn_k.weight", (kv_heads * head_dim, d), Q4_K),
                    (f"blk.{i}.attn_v.weight", (kv_heads * head_dim, d), Q6_K), (f"blk.{i}.attn_output.weight", (d, d), Q4_K),
                    (f"blk.{i}.ffn_gate.weight", (ff, d), Q4_K), (f"blk.{i}.ffn_up.weight", (ff, d), Q4_K),
                    (f"blk.{i}.ffn_down.weight", (d, ff), Q6_K)]
    total = 0
    for tensor, shape, kind in tensors:
        size = nbytes(shape, kind)
        writer.add_tensor_info(tensor, shape, np.dtype(np.float32), size, raw_dtype=kind)
        total += -(-size // writer.data_alignment) * writer.data_alignment
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with out.open("r+b") as f:  # the data section, aligned, as zeros that take no disk
        start = -(-f.seek(0, 2) // writer.data_alignment) * writer.data_alignment
        f.truncate(start + total)


if __name__ == "__main__":
    write(sys.argv[1], Path(sys.argv[2]))
