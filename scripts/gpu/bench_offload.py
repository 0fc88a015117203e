"""CPU vs full CUDA offload for one GGUF: load time, time to first token of a long prompt, decode speed.

    bench_offload.py MODEL.gguf [PROMPT_TOKENS]   (default 1000; the CPU run uses 256 prompt and 32 decode tokens)
"""

import sys
import time

import llama_cpp
from llama_cpp import Llama


def run(path: str, label: str, n_gpu_layers: int, prompt: list[int], n_decode: int) -> None:
    started = time.perf_counter()
    llm = Llama(path, n_ctx=4096, n_gpu_layers=n_gpu_layers, n_threads=16, n_batch=512, verbose=label == "gpu")
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    first_s = 0.0
    for n, _ in enumerate(llm.generate(prompt, temp=0.0, reset=True), start=1):
        if n == 1:
            first_s = time.perf_counter() - started
        if n >= n_decode:
            break
    decode_s = time.perf_counter() - started - first_s
    print(
        f"RESULT {label}: load {load_s:.2f} s, prompt {len(prompt)} tok in {first_s:.3f} s "
        f"({len(prompt) / first_s:.0f} tok/s), decode {n_decode - 1} tok in {decode_s:.3f} s "
        f"({(n_decode - 1) / decode_s:.1f} tok/s)",
        flush=True,
    )
    del llm


def main() -> None:
    path = sys.argv[1]
    n_prompt = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    print("supports_gpu_offload", llama_cpp.llama_supports_gpu_offload())
    prompt = list(range(100, 100 + n_prompt))
    run(path, "gpu", -1, prompt, 256)
    run(path, "cpu", 0, prompt[:256], 32)


if __name__ == "__main__":
    main()
