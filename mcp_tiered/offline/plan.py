"""`mcp-tiered plan`: the memory a tier needs, from its GGUF's metadata alone (its header and tensor table,
read by `gguf_header`; no weights are loaded), against the GPUs found (NVIDIA's management library)
or named (`--gpu 24GB`, `--gpu a100-80`, one flag per GPU).

The figures follow what llama.cpp allocates (checked against the buffer sizes it reports when it loads the
default models: docs/models-and-capacity.md, "What fits"):
- weights: the tensors' bytes; layer i and the output layer on the GPU when `n_gpu_layers` reaches them
  (llama.cpp offloads the last layers first, the output layer only when n_gpu_layers > the layer count),
  the token embeddings always in RAM;
- KV cache: f16 keys and values for every context cell of every layer, on the device of its layer;
- compute buffer: the larger of the logits of one 512-token micro-batch and its attention scores, plus its
  activations (flash attention, which CUDA builds use, drops the attention scores).
Decoding reads every weight once per token, so its speed is bounded by memory bandwidth: the estimate is
bytes on the GPU / GPU bandwidth + bytes in RAM / RAM bandwidth, an upper bound for one sequence.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..weights.gguf_header import ARRAY, INTEGERS, STRING, TYPE_NAMES, GGUFError, HeaderCut, read_header, shown

if TYPE_CHECKING:
    from ..weights.hub import HfRef

GIB = 1 << 30
MIB = 1 << 20
N_UBATCH = 512
GPU_RESERVE = 512 * MIB
"""What the CUDA context and the driver take on each GPU before llama.cpp allocates anything."""
CPU_BANDWIDTH = 60e9
"""Bytes/s a server's RAM delivers to llama.cpp's CPU layers (dual-channel DDR5); --cpu-bandwidth overrides."""


@dataclass(frozen=True)
class Gpu:
    name: str
    memory: int
    bandwidth: float | None = None
    """Bytes per second; None when unknown (a size given as --gpu 24GB)."""


PRESETS = {
    "rtx4090": Gpu("RTX 4090", 24 * 10**9, 1008e9),
    "a6000": Gpu("RTX A6000", 48 * 10**9, 768e9),
    "a100-40": Gpu("A100 40GB", 40 * 10**9, 1555e9),
    "a100-80": Gpu("A100 80GB", 80 * 10**9, 2039e9),
    "h100": Gpu("H100 80GB", 80 * 10**9, 3350e9),
    "h200": Gpu("H200", 141 * 10**9, 4800e9),
}
SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(gb|gib|g)$", re.IGNORECASE)


def parse_gpu(spec: str) -> Gpu:
    """A preset name or a size (24GB, 24GiB); raises ValueError with the valid forms."""
    key = spec.strip().lower().replace(" ", "").replace("_", "-")
    if key in PRESETS:
        return PRESETS[key]
    if match := SIZE.match(key):
        number, unit = float(match[1]), match[2].lower()
        return Gpu(spec, int(number * (GIB if unit == "gib" else 10**9)))
    raise ValueError(f"--gpu: {spec!r} is not a GPU; give a size such as 24GB or 24GiB, or one of "
                     f"{', '.join(PRESETS)}")


def gpus_found() -> tuple[list[Gpu], str | None]:
    """The NVIDIA GPUs of this machine, or none and why."""
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"no NVIDIA driver ({exc})"
    try:
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
            clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
            # DDR: two transfers per clock.
            found.append(Gpu(name, memory, 2 * clock_mhz * 1e6 * bus_bits / 8 if bus_bits and clock_mhz else None))
        return found, None if found else "the NVIDIA driver sees no GPU"
    finally:
        pynvml.nvmlShutdown()


@dataclass(frozen=True)
class Shape:
    """What a GGUF file says about its model."""

    architecture: str
    name: str
    quantization: str
    parameters: int
    layers: int
    heads: int
    kv_heads: int
    key_length: int
    value_length: int
    embedding: int
    vocab: int
    trained_context: int
    layer_bytes: tuple[int, ...]
    """Weights of each repeating layer (blk.N.*)."""
    output_bytes: int
    """The output layer (output norm and, unless tied to the embeddings, the output matrix)."""
    embedding_bytes: int
    """The token embeddings: always in RAM."""

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + self.output_bytes + self.embedding_bytes


MAX_LAYERS = 512
"""llama.cpp's LLAMA_MAX_LAYERS."""


def read_shape(path: Path) -> Shape:
    """Raises GGUFError (a ValueError) naming the file and what is wrong or missing, or OSError. A split GGUF's
    tensors are read from every part beside it."""
    from gguf import LlamaFileType

    from ..weights.hub import MAX_PARTS, SPLIT

    seen: set[str] = set()
    first = read_header(path, seen)
    tensors = list(first.tensors)
    parts = 1
    if split := SPLIT.match(path.name):
        parts = int(split["parts"])
        if not 1 <= parts <= MAX_PARTS:
            raise GGUFError(path, f"the name says the GGUF is split into {parts} parts; a split GGUF has 1 to "
                                  f"{MAX_PARTS} (llama.cpp holds every part open while it loads)")
        for part in range(2, parts + 1):
            other = path.with_name(f"{split['stem']}-{part:05d}-of-{split['parts']}.gguf")
            if not other.is_file():
                raise GGUFError(other, f"part {part} of the {parts} of this split GGUF is missing")
            tensors += read_header(other, seen).tensors

    def value(key: str, default: Any = None, kinds: frozenset[int] = INTEGERS, low: int = 0,
              high: int | None = None) -> Any:
        if key not in first.types:
            if default is None:
                raise GGUFError(path, f"the GGUF metadata has no {shown(key)}")
            return default
        kind, found = first.types[key], first.values[key]
        if kind not in kinds:
            expected = "a string" if kinds == {STRING} else "an integer"
            raise GGUFError(path, f"{shown(key)} has GGUF type {TYPE_NAMES[kind]}, not {expected} type")
        if kind in INTEGERS and (found < low or (high is not None and found > high)):
            raise GGUFError(path, f"{shown(key)} is {found}; it must be "
                                  + (f"between {low} and {high}" if high is not None else f"at least {low}"))
        return found

    arch = value("general.architecture", kinds=frozenset({STRING})).decode("utf-8", "replace")
    if (count := value("split.count", 0, high=MAX_PARTS)) not in (0, parts):
        raise GGUFError(path, f"split.count says {count} parts, the file name {parts}")
    layers = value(f"{arch}.block_count", low=1, high=MAX_LAYERS)
    heads = value(f"{arch}.attention.head_count", low=1)
    kv_heads = value(f"{arch}.attention.head_count_kv", heads, low=1)
    embedding = value(f"{arch}.embedding_length", low=1)
    key_length = value(f"{arch}.attention.key_length", embedding // heads)
    tokens = first.values.get("tokenizer.ggml.tokens") if first.types.get("tokenizer.ggml.tokens") == ARRAY else 0
    vocab = value(f"{arch}.vocab_size", tokens or 0)
    per_layer = [0] * layers
    output = embeddings = 0
    for name, _, nbytes in tensors:
        if match := re.match(r"blk\.(\d+)\.", name):
            if int(match[1]) >= layers:
                raise GGUFError(path, f"the tensor {shown(name)} is in layer {match[1]}, but "
                                      f"{shown(f'{arch}.block_count')} is {layers}")
            per_layer[int(match[1])] += nbytes
        elif name.startswith("token_embd"):
            embeddings += nbytes
        else:
            output += nbytes
    file_type = first.values.get("general.file_type") if first.types.get("general.file_type") in INTEGERS else None
    try:
        quantization = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    except ValueError:
        quantization = "unknown"
    name = first.values.get("general.name") if first.types.get("general.name") == STRING else None
    return Shape(_printable(arch), _printable(name.decode("utf-8", "replace")) if name else path.stem, quantization,
                 sum(elements for _, elements, _ in tensors), layers, heads, kv_heads, key_length,
                 value(f"{arch}.attention.value_length", key_length), embedding, vocab,
                 value(f"{arch}.context_length", 0), tuple(per_layer), output, embeddings)


def _printable(text: str) -> str:
    """Text from a file for a table: control characters (terminal escapes) as \\x.. escapes."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def remote_shape(ref: HfRef, key: str, first_bytes: int = 4 << 20, limit: int = 256 << 20) -> Shape:
    """The shape of a hub model that is not downloaded, from the first megabytes of each of its files
    (more until the header and tensor table are all there); raises hub.PullError, or GGUFError naming the
    hub file."""
    import tempfile

    from ..weights import hub

    with tempfile.TemporaryDirectory(prefix="mcp-tiered-plan-") as folder:
        for name in ref.files():
            nbytes = first_bytes
            while True:
                path, got = hub.fetch_head(ref, name, Path(folder), nbytes, key)
                try:
                    read_header(path, set(), got)
                    break
                except HeaderCut:
                    if got < nbytes:
                        raise hub.PullError(f"{key}: {ref}: the hub sent {got} bytes of {name} where {nbytes} were "
                                            "asked, and its GGUF header goes on past them") from None
                except GGUFError as exc:
                    raise GGUFError(f"{ref} ({name} on the hub)", exc.what) from None
                if nbytes >= limit:
                    raise hub.PullError(f"{key}: {ref}: the GGUF header of {name} is larger than {limit >> 20} MB")
                nbytes *= 2
        try:
            return read_shape(Path(folder) / Path(ref.file).name)
        except GGUFError as exc:
            raise GGUFError(f"{ref} (on the hub)", exc.what) from None


@dataclass(frozen=True)
class Need:
    """Bytes one copy of the model needs, on the GPUs and in RAM, with `gpu_layers` layers offloaded."""

    gpu_layers: int
    weights_gpu: int
    weights_ram: int
    kv_gpu: int
    kv_ram: int
    compute_gpu: int
    compute_ram: int

    @property
    def gpu(self) -> int:
        return self.weights_gpu + self.kv_gpu + self.compute_gpu

    @property
    def ram(self) -> int:
        return self.weights_ram + self.kv_ram + self.compute_ram


def context_cells(n_ctx: int) -> int:
    return -(-n_ctx // 256) * 256  # llama.cpp pads the KV cache to 256 cells


def kv_bytes_per_layer(shape: Shape, cells: int) -> int:
    return cells * shape.kv_heads * (shape.key_length + shape.value_length) * 2


def compute_bytes(shape: Shape, cells: int, flash_attention: bool) -> int:
    logits = 4 * N_UBATCH * shape.vocab
    scores = 4 * N_UBATCH * cells * (1 if flash_attention else shape.heads + 1)
    return max(logits, scores) + 4 * N_UBATCH * 3 * shape.embedding


def need(shape: Shape, n_ctx_total: int, gpu_layers: int, flash_attention: bool) -> Need:
    """`gpu_layers` as llama.cpp's n_gpu_layers (-1: all and the output layer)."""
    n = shape.layers
    offloaded = n + 1 if gpu_layers < 0 else min(gpu_layers, n + 1)
    on_gpu = list(range(n - min(offloaded, n), n))
    cells = context_cells(n_ctx_total)
    kv_layer = kv_bytes_per_layer(shape, cells)
    weights_gpu = sum(shape.layer_bytes[i] for i in on_gpu) + (shape.output_bytes if offloaded > n else 0)
    compute = compute_bytes(shape, cells, flash_attention)
    return Need(offloaded, weights_gpu, shape.weight_bytes - weights_gpu, kv_layer * len(on_gpu),
                kv_layer * (n - len(on_gpu)), compute if offloaded else 0, 0 if offloaded else compute)


def tokens_per_second(shape: Shape, n: Need, gpus: list[Gpu], cpu_bandwidth: float) -> float | None:
    """Decoding speed bound for one sequence: every weight read once per token."""
    bandwidth = min((g.bandwidth for g in gpus if g.bandwidth), default=None)
    if n.weights_gpu and bandwidth is None:
        return None
    seconds = (n.weights_gpu / bandwidth if n.weights_gpu else 0.0) + (n.weights_ram - shape.embedding_bytes) / cpu_bandwidth
    return 1 / seconds if seconds > 0 else None


@dataclass
class Verdict:
    fits: bool
    gpu_layers: int
    """The n_gpu_layers to use: all (layers + 1) when everything fits."""
    need: Need
    available: int
    tokens_per_s: float | None
    full_tokens_per_s: float | None
    """With every layer on the GPUs (what more memory would give)."""
    words: str = field(default="")


def fit(shape: Shape, n_ctx_total: int, copies: int, gpus: list[Gpu], wanted_layers: int,
        cpu_bandwidth: float = CPU_BANDWIDTH, flash_attention: bool = True) -> Verdict:
    """Does the tier fit `gpus` with the configured n_gpu_layers; if not, how many layers do."""
    available = max(sum(g.memory for g in gpus) - len(gpus) * GPU_RESERVE, 0)
    all_layers = shape.layers + 1
    wanted = all_layers if wanted_layers < 0 else min(wanted_layers, all_layers)
    full = need(shape, n_ctx_total, all_layers, flash_attention)
    full_speed = tokens_per_second(shape, full, gpus, cpu_bandwidth) if gpus else None
    if not gpus:
        cpu = need(shape, n_ctx_total, 0, flash_attention)
        return Verdict(False, 0, cpu, 0, tokens_per_second(shape, cpu, [], cpu_bandwidth), None,
                       "no GPU: every layer runs on the CPU")
    best = None
    for layers in range(wanted, -1, -1):
        candidate = need(shape, n_ctx_total, layers, flash_attention)
        if copies * candidate.gpu <= available:
            best = candidate
            break
    if best is not None and best.gpu_layers == wanted:
        speed = tokens_per_second(shape, best, gpus, cpu_bandwidth)
        return Verdict(True, wanted, best, available, speed, full_speed,
                       f"fits: {_gib(copies * best.gpu)} of {_gib(available)} GiB")
    best = best or need(shape, n_ctx_total, 0, flash_attention)
    speed = tokens_per_second(shape, best, gpus, cpu_bandwidth)
    words = (f"does not fit ({_gib(copies * need(shape, n_ctx_total, wanted, flash_attention).gpu)} GiB needed, "
             f"{_gib(available)} available): n_gpu_layers = {best.gpu_layers} fits")
    if speed and full_speed:
        words += f", at about {speed / full_speed:.0%} of the all-GPU speed"
    return Verdict(False, best.gpu_layers, best, available, speed, full_speed, words)


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def as_dict(shape: Shape) -> dict:
    data = asdict(shape)
    data.pop("layer_bytes")
    data["weight_bytes"] = shape.weight_bytes
    data["bytes_per_layer"] = round(sum(shape.layer_bytes) / max(shape.layers, 1))
    return data
