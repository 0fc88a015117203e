"""Small GGUF files for the planner's tests, written with the gguf package's GGUFWriter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES


def write_smollm2_like(out: Path, vocab: int = 512, head_count: int = 9) -> None:
    """SmolLM2-135M's shape (30 layers, 9 heads, 3 KV heads, Q4_1) with a small tokenizer; the data section
    sparse. `head_count`: the value of llama.attention.head_count."""
    d, layers, ff, heads, kv_heads = 576, 30, 1536, 9, 3
    writer = GGUFWriter(str(out), "llama")
    writer.add_name("SmolLM2 135M Instruct")
    writer.add_block_count(layers)
    writer.add_context_length(8192)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(head_count)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(d // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(3)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"tok{i}" for i in range(vocab)])
    writer.add_token_types([1] * vocab)
    writer.add_token_merges([f"t o{i}" for i in range(vocab // 2)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}")
    q, f32, head = GGMLQuantizationType.Q4_1, GGMLQuantizationType.F32, d // heads
    tensors = [("token_embd.weight", (vocab, d), GGMLQuantizationType.Q8_0), ("output_norm.weight", (d,), f32)]
    for i in range(layers):
        tensors += [(f"blk.{i}.attn_norm.weight", (d,), f32), (f"blk.{i}.ffn_norm.weight", (d,), f32),
                    (f"blk.{i}.attn_q.weight", (d, d), q), (f"blk.{i}.attn_k.weight", (kv_heads * head, d), q),
                    (f"blk.{i}.attn_v.weight", (kv_heads * head, d), q), (f"blk.{i}.attn_output.weight", (d, d), q),
                    (f"blk.{i}.ffn_gate.weight", (ff, d), q), (f"blk.{i}.ffn_up.weight", (ff, d), q),
                    (f"blk.{i}.ffn_down.weight", (d, ff), q)]
    total = 0
    for name, shape, kind in tensors:
        block, size = GGML_QUANT_SIZES[kind]
        nbytes = int(np.prod(shape)) // block * size
        writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=kind)
        total += -(-nbytes // writer.data_alignment) * writer.data_alignment
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with out.open("r+b") as f:
        start = -(-f.seek(0, 2) // writer.data_alignment) * writer.data_alignment
        f.truncate(start + total)
