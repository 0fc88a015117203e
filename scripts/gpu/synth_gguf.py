"""A llama-architecture GGUF with random F16 weights and a real tokenizer, for GPU offload checks where no
model can be downloaded (the device machine reaches no network; a 2.4 GB model is made there in ~25 s).

    synth_gguf.py TOKENIZER.gguf OUT.gguf [HIDDEN LAYERS FFN HEADS KV_HEADS]   (default 2048 24 5632 16 4, ~1.2B)
    synth_gguf.py --tokenizer-only SOURCE.gguf OUT.gguf                       (the tokenizer keys alone, ~2 MB)

Needs the `gguf` package (pip install gguf). The text such a model writes is noise; speed and memory are real.
"""

import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter


def copy_tokenizer(reader: GGUFReader, writer: GGUFWriter) -> int:
    n_vocab = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            writer.add_key_value(name, field.contents(), kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, field.contents(), kind)
        if name == "tokenizer.ggml.tokens":
            n_vocab = len(field.data)
    return n_vocab


def finish(writer: GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str]) -> None:
    if argv[0] == "--tokenizer-only":
        writer = GGUFWriter(argv[2], "llama")
        copy_tokenizer(GGUFReader(argv[1]), writer)
        finish(writer)
        return
    source, out = argv[0], argv[1]
    d, layers, ff, heads, kv_heads = (map(int, argv[2:7]) if len(argv) >= 7 else (2048, 24, 5632, 16, 4))
    writer = GGUFWriter(out, "llama")
    writer.add_name("synthetic")
    writer.add_block_count(layers)
    writer.add_context_length(8192)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(d // heads)
    writer.add_file_type(1)  # mostly F16
    n_vocab = copy_tokenizer(GGUFReader(source), writer)
    writer.add_vocab_size(n_vocab)
    rng = np.random.default_rng(0)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    writer.add_tensor("token_embd.weight", weights(n_vocab, d))
    writer.add_tensor("output_norm.weight", np.ones(d, np.float32))
    kv_dim = d // heads * kv_heads
    for i in range(layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", np.ones(d, np.float32))
        writer.add_tensor(p + "ffn_norm.weight", np.ones(d, np.float32))
        writer.add_tensor(p + "attn_q.weight", weights(d, d))
        writer.add_tensor(p + "attn_k.weight", weights(kv_dim, d))
        writer.add_tensor(p + "attn_v.weight", weights(kv_dim, d))
        writer.add_tensor(p + "attn_output.weight", weights(d, d))
        writer.add_tensor(p + "ffn_gate.weight", weights(ff, d))
        writer.add_tensor(p + "ffn_up.weight", weights(ff, d))
        writer.add_tensor(p + "ffn_down.weight", weights(d, ff))
    finish(writer)


if __name__ == "__main__":
    main(sys.argv[1:])
