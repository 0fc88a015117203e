#!/usr/bin/env python
"""What does [auth] cost a request? Two figures, each against a baseline in the same process tree:

  1. the verifier alone, in this process (`Verifier.verify_token`): a named key (one stat of the keys file, a
     sha256, a lookup) and a JWT access token (RS256, PyJWT, cached JWKS from a provider this script serves on
     loopback), median and p99 in microseconds, against the legacy shared token (one constant-time compare);
  2. MCP `tools/list` requests (2026-07-28: one self-contained POST each) over Streamable HTTP, one at a time, to `serve --transport http`: unguarded on loopback
     (the baseline), with the legacy token, with a named key and with a JWT (the same kind of provider); median
     latency of each and its ratio to the baseline. The servers run one after another, in alternating order.

Run it alone: timing on this machine is noisy, and a test suite beside it makes it meaningless.

    .venv/bin/python scripts/bench_auth.py [--verifies 5000] [--pings 400] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from oidc_provider import TinyProvider, sign_token  # noqa: E402

from mcp_tiered.auth.keys import add_key  # noqa: E402
from mcp_tiered.auth.verifier import Verifier  # noqa: E402
from mcp_tiered.config.auth import AuthConfig, OAuthConfig  # noqa: E402

MCP_TIERED = str(Path(sys.executable).with_name("mcp-tiered"))
LEGACY = "legacy-token-for-the-benchmark"
PING = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}}}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/list"}


class Provider(TinyProvider):
    def token(self, resource: str) -> str:
        now = int(time.time())
        return sign_token(self.jwks, {"iss": self.issuer, "aud": resource, "sub": "bench", "iat": now,
                                      "exp": now + 3600, "scope": "tools"})


def quantiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


async def bench_verifier(folder: Path, provider: Provider, count: int) -> None:
    key = add_key(folder / "keys.json", "bench", ["tools"])
    resource = "http://127.0.0.1:9/mcp"
    auth = AuthConfig(keys_file=str(folder / "keys.json"), oauth=OAuthConfig(issuer=provider.issuer, resource=resource))
    verifier = Verifier(auth, ["small"], LEGACY)
    tokens = {"legacy token": LEGACY, "named key": key, "JWT (RS256)": provider.token(resource)}
    for token in tokens.values():
        assert await verifier.verify_token(token) is not None
    samples: dict[str, list[float]] = {name: [] for name in tokens}
    for _ in range(count):
        for name, token in tokens.items():
            started = time.perf_counter()
            await verifier.verify_token(token)
            samples[name].append((time.perf_counter() - started) * 1e6)
    await verifier.aclose()
    print("1. Verifier.verify_token, one at a time (microseconds)")
    for name, values in samples.items():
        median, p99 = quantiles(values)
        print(f"   {name:<14} median {median:8.1f}   p99 {p99:8.1f}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def pings(folder: Path, kind: str, provider: Provider, key: str, count: int, smollm2: Path) -> float:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    auth = {"unguarded": "", "legacy token": '[server]\nauth_token_env = "BENCH_TOKEN"\n',
            "named key": f'[auth]\nkeys_file = "{folder / "keys.json"}"\n',
            "JWT (RS256)": f'[auth.oauth]\nissuer = "{provider.issuer}"\nresource = "{resource}"\n'}[kind]
    config = folder / f"{kind.split()[0]}.toml"
    config.write_text(f'{auth}[tiers.small]\nmodel = "{smollm2}"\ndescription = "s"\n[ledger]\nenabled = false\n')
    token = {"unguarded": None, "legacy token": LEGACY, "named key": key, "JWT (RS256)": provider.token(resource)}[kind]
    headers = {**HEADERS, **({"authorization": f"Bearer {token}"} if token else {})}
    env = {**os.environ, "BENCH_TOKEN": LEGACY}
    process = subprocess.Popen([MCP_TIERED, "--log-level", "WARNING", "serve", "--config", str(config),
                                "--transport", "http", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx2.AsyncClient() as http:
            while True:
                try:
                    if (await http.get(f"{base}/healthz")).status_code == 200:
                        break
                except httpx2.TransportError:
                    await anyio.sleep(0.1)
            for _ in range(20):  # warm up (and the JWKS fetch)
                answer = await http.post(f"{base}/mcp", json=PING, headers=headers)
                assert answer.status_code == 200, (kind, answer.status_code, answer.text[:300])
            samples = []
            for _ in range(count):
                started = time.perf_counter()
                await http.post(f"{base}/mcp", json=PING, headers=headers)
                samples.append((time.perf_counter() - started) * 1000)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    return statistics.median(samples)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--verifies", type=int, default=5000)
    parser.add_argument("--pings", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from mcp_tiered.config.schema import default_models_dir

    smollm2 = default_models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf"
    provider = Provider()
    server = await asyncio.start_server(provider.handle, "127.0.0.1", 0)
    provider.issuer = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            await bench_verifier(folder, provider, args.verifies)
            key = add_key(folder / "keys.json", "pinger", ["tools"])
            kinds = ["unguarded", "legacy token", "named key", "JWT (RS256)"]
            medians: dict[str, list[float]] = {k: [] for k in kinds}
            for round_ in range(args.rounds):
                for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
                    medians[kind].append(await pings(folder, kind, provider, key, args.pings, smollm2))
        server.close()
    base = statistics.median(medians["unguarded"])
    print(f"2. MCP tools/list over Streamable HTTP, one at a time, {args.pings} per server and round, {args.rounds} rounds")
    for kind in kinds:
        value = statistics.median(medians[kind])
        print(f"   {kind:<14} median {value:6.2f} ms   {value / base:5.3f}x unguarded")


if __name__ == "__main__":
    anyio.run(main)
