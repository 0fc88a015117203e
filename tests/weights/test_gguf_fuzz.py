"""The GGUF reader on a few hundred hostile headers: seeded mutations (counts, lengths, types, values, bytes,
cuts, splices) of a SmolLM2-shaped header written with the gguf package's GGUFWriter, each read the way
`plan` and `check` read a tier's model (`plan_report.tier_plans`). Every file gives a plan or one sentence
naming the file: no traceback, under 2 s, and at most 200 MB of peak RSS in the process that reads them,
which runs under an address-space cap so that a runaway allocation fails there (as a traceback) and not on
the machine."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

from conftest import REPO, server_env
from small_gguf import write_smollm2_like

SEED = 20
MAX_SECONDS = 2.0
MAX_RSS = 200 << 20
WORKER = r"""
import json, resource, signal, sys, time, traceback
from pathlib import Path

from mcp_tiered.offline import plan, plan_report
from mcp_tiered.config.load import parse_config



def status(field):  # in bytes; VmHWM is this process's peak RSS (ru_maxrss can be its parent's at the fork)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024


resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))


class TooSlow(BaseException):  # not an OSError, which the planner reports as a problem
    pass


def too_slow(*_):
    raise TooSlow("still reading after 5 s")


signal.signal(signal.SIGALRM, too_slow)
gpus = [plan.Gpu("test", 24 * 10**9, 1e12)]
for line in sys.stdin:
    path = Path(line.strip())
    started = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        tier = {"model": str(path), "description": "fuzz", "n_ctx": 1024, "max_tokens": 16}
        (row,) = plan_report.tier_plans(parse_config({"tiers": {"t": tier}}, base_dir=path.parent), gpus,
                                        plan.CPU_BANDWIDTH)
        outcome = {"problem": row["problem"]} if "problem" in row else {"verdict": row["verdict"]}
    except BaseException as exc:
        outcome = {"traceback": traceback.format_exception_only(exc)[-1].strip()[:300]}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    seconds = time.perf_counter() - started
    print(json.dumps({"file": str(path), "seconds": seconds, "peak_rss": status("VmHWM"), **outcome}), flush=True)
"""


@dataclass(frozen=True)
class Slot:
    """A number in the header: a count, a length, a type or a value."""

    offset: int
    size: int
    role: str


def slots(base: Path) -> tuple[list[list[Slot]], int]:
    """The numbers of the valid base file, grouped by the key or tensor they belong to; the header's size."""
    reader = GGUFReader(str(base))
    origin = reader.data.ctypes.data
    groups: list[list[Slot]] = []
    tensor_names = {t.name for t in reader.tensors}
    for field in [*reader.fields.values(), *(t.field for t in reader.tensors)]:
        is_tensor = field.name in tensor_names and len(field.parts) == 6
        stringy = bool(field.types) and field.types[-1] == GGUFValueType.STRING
        group = []
        for i, part in enumerate(field.parts):
            if part.dtype == np.uint8 and (i == 1 or stringy or is_tensor):
                continue  # the bytes of a key, a string or a tensor name
            if field.name.startswith("GGUF."):
                role = "header"
            elif is_tensor:
                role = {0: "name length", 2: "dimensions", 3: "shape", 4: "ggml type", 5: "offset"}[i]
            else:
                role = {0: "key length", 2: "value type"}.get(i) or (
                    "item type" if i == 3 and field.types[0] == GGUFValueType.ARRAY else
                    "array length" if i == 4 and field.types[0] == GGUFValueType.ARRAY else
                    "string length" if stringy else f"value of {field.name}")
            for k in range(part.size):  # each dimension of a shape on its own
                group.append(Slot(part.ctypes.data - origin + k * part.itemsize, part.itemsize, role))
        groups.append(group)
    return groups, reader.data_offset


def hostile(rng: random.Random, slot: Slot, original: int) -> int:
    if slot.role in ("value type", "item type"):
        choices = [*range(14), 100, 2**31, 2**32 - 1]
    elif slot.role == "ggml type":
        choices = [*range(45), 2**31 - 1, 2**31, 2**32 - 1]
    else:
        choices = [0, 1, 2, 3, 4, 7, 8, 9, 12, 13, 63, 64, 65, 255, 256, 4096, 65535, 65536, 2**31 - 1, 2**31,
                   2**32 - 1, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1, original + 1, original - 1,
                   original * 2, original * 1000, rng.getrandbits(8 * slot.size)]
    return rng.choice(choices) % (1 << (8 * slot.size))


def mutations(base: Path) -> list[tuple[str, bytes, int]]:
    """(what was done, the header's bytes, the file's size) of each mutated file."""
    rng = random.Random(SEED)
    groups, header_size = slots(base)
    size = base.stat().st_size
    header = base.read_bytes()[:header_size]
    out = [("unchanged", header, size)]

    def set_number(slot: Slot, value: int) -> bytes:
        changed = bytearray(header)
        changed[slot.offset:slot.offset + slot.size] = value.to_bytes(slot.size, "little")
        return bytes(changed)

    def number(slot: Slot) -> int:
        return int.from_bytes(header[slot.offset:slot.offset + slot.size], "little")

    every = [slot for group in groups for slot in group]
    types = [s for s in every if s.role.endswith("type")]
    metadata = [s for s in every if s.role.startswith("value of llama.") or s.role.startswith("value of general.")]
    for _ in range(160):
        slot = rng.choice(rng.choice(groups))
        value = hostile(rng, slot, number(slot))
        out.append((f"{slot.role} at byte {slot.offset} = {value}", set_number(slot, value), size))
    for pool, count in ((types, 60), (metadata, 60)):
        for _ in range(count):
            slot = rng.choice(pool)
            value = hostile(rng, slot, number(slot))
            out.append((f"{slot.role} at byte {slot.offset} = {value}", set_number(slot, value), size))
    for _ in range(80):
        changed = bytearray(header)
        at = rng.randrange(len(header))
        for i in range(rng.randint(1, 16)):
            if at + i < len(header):
                changed[at + i] = rng.randrange(256)
        out.append((f"bytes from {at} replaced", bytes(changed), size))
    for _ in range(50):
        cut = rng.randrange(len(header))
        out.append((f"cut at byte {cut}", header[:cut], cut))
    for _ in range(15):
        cut = rng.randrange(len(header), size)
        out.append((f"cut in the data at byte {cut}", header, cut))
    for _ in range(50):
        at, length = rng.randrange(len(header)), rng.randint(1, 64)
        kind = rng.choice(["deleted", "doubled", "inserted"])
        chunk = header[at:at + length] if kind == "doubled" else rng.randbytes(length) if kind == "inserted" else b""
        changed = header[:at] + chunk + header[at + (length if kind == "deleted" else 0):]
        out.append((f"{length} bytes at {at} {kind}", changed, size))
    return out


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict[str, str]]:
    """Each mutated file read by one worker process: its outcome, seconds and the worker's peak RSS after it."""
    folder = tmp_path_factory.mktemp("fuzz")
    base = folder / "base.gguf"
    write_smollm2_like(base)
    what: dict[str, str] = {}
    for i, (label, header, size) in enumerate(mutations(base)):
        path = folder / f"m{i:03d}.gguf"
        with path.open("wb") as f:
            f.write(header[:size])
            f.truncate(size)
        what[str(path)] = label
    done = subprocess.run([sys.executable, "-c", WORKER], input="\n".join(what) + "\n", capture_output=True,
                          text=True, timeout=300, cwd=REPO, env=server_env(OPENBLAS_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == len(what), done.stderr[-2000:]
    return rows, what


def test_no_hostile_header_gives_a_traceback(fuzzed) -> None:
    rows, what = fuzzed
    broken = [(what[r["file"]], r["traceback"]) for r in rows if "traceback" in r]
    assert broken == [], f"{len(broken)} of {len(rows)}: {broken[:8]}"


def test_every_unreadable_header_is_one_sentence_naming_the_file(fuzzed) -> None:
    rows, what = fuzzed
    problems = [r for r in rows if "problem" in r]
    bad = [(what[r["file"]], r["problem"]) for r in problems
           if not (r["problem"].startswith("tiers.t.model: ") and r["file"] in r["problem"]
                   and r["problem"].isprintable() and len(r["problem"]) < 600)]
    assert bad == []
    assert rows[0]["verdict"].startswith("fits")  # the unchanged header
    assert len(problems) > len(rows) // 2 and sum("verdict" in r for r in rows) > 10  # the fuzz reaches both sides


def test_every_header_is_read_within_2_s_and_200_mb(fuzzed) -> None:
    rows, what = fuzzed
    slow = [(what[r["file"]], round(r["seconds"], 2)) for r in rows if r["seconds"] >= MAX_SECONDS]
    assert slow == []
    worst = max(rows, key=lambda r: r["peak_rss"])
    assert worst["peak_rss"] <= MAX_RSS, f"{worst['peak_rss'] >> 20} MB after {what[worst['file']]}"
    print(f"{len(rows)} files; slowest {max(r['seconds'] for r in rows):.3f} s; peak RSS "
          f"{worst['peak_rss'] / 2**20:.0f} MB")
