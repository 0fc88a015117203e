"""Cross-tier verification: the large tier reads the small tier's answer in one prefill before it is kept.
Real models (SmolLM2 answers, Qwen2.5-Coder 1.5B reads) through the dispatcher and over stdio; the walk's
branches on scripted backends; the decision function on its own."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import anyio
import pytest

from conftest import ScriptedBackend, stdio_server
from mcp_tiered.backends import Completion, GenerationRequest
from mcp_tiered.backends.base import ScoredAnswer
from mcp_tiered.config.schema import TierConfig
from mcp_tiered.backends.llama import LlamaBackend
from mcp_tiered.calls.dispatch import Dispatcher
from mcp_tiered.errors import BusyError
from mcp_tiered.calls.escalation import HandOn, Standing, Stop, Verify, next_step
from mcp_tiered.accounting.ledger import Ledger
from mcp_tiered.calls.tiers import Policy, Tier, TierRegistry

pytestmark = pytest.mark.anyio

# SmolLM2 at temperature 0 answers "20 + 5 = 7." (Qwen reads it as very unlikely) and "The capital of Ethiopia
# is Addis Ababa." (Qwen finds it plausible): the 10 % quantile of Qwen's token probabilities is 0.000 and 0.37.
WRONG = "What is 20 + 5? Answer with the number only."
RIGHT = "What is the capital of Ethiopia? Answer with the city name only."
VERIFY = Policy(escalate_to="large", verify_with="large", verify_statistic="quantile", verify_quantile=0.1, min_verification=0.1)


@pytest.fixture
async def real_tiers(smollm2: Path, qwen: Path):
    small = LlamaBackend("small", TierConfig(description="s", model=smollm2, n_ctx=1024))
    large = LlamaBackend("large", TierConfig(description="l", model=qwen, n_ctx=2048))
    tiers = TierRegistry([Tier("small", small, "small", 48, 0.0, VERIFY), Tier("large", large, "large", 48, 0.0)])
    try:
        yield tiers, large
    finally:
        await tiers.aclose()


@pytest.mark.model
async def test_a_wrong_small_answer_that_the_verifier_rejects_goes_to_large(real_tiers) -> None:
    tiers, _ = real_tiers
    with anyio.fail_after(120):
        result = await Dispatcher(tiers).generate("small", WRONG, temperature=0)
    assert result.served_by == "large" and "25" in result.text
    (hop,) = result.escalations
    assert (hop.from_, hop.to, hop.reason) == ("small", "large", "rejected")
    (reading,) = result.verifications
    assert (reading.tier, reading.by, reading.statistic, reading.kept) == ("small", "large", "quantile", False)
    assert reading.value < 0.1 and reading.answer_tokens > 0 and reading.ms > 0


@pytest.mark.model
async def test_a_right_small_answer_is_kept_after_the_verifier_reads_it(real_tiers) -> None:
    tiers, _ = real_tiers
    with anyio.fail_after(120):
        result = await Dispatcher(tiers).generate("small", RIGHT, temperature=0)
    assert result.served_by == "small" and "Addis Ababa" in result.text and result.escalations == []
    (reading,) = result.verifications
    assert reading.kept and reading.value >= 0.1


@pytest.mark.model
async def test_the_verifiers_prefill_serves_its_own_answer(real_tiers) -> None:
    """After reading prompt + answer, large answers the same prompt without evaluating the prompt again:
    llama.cpp's own counters show one prefill, not two."""
    import llama_cpp

    tiers, large = real_tiers
    with anyio.fail_after(120):
        result = await Dispatcher(tiers).generate("small", WRONG, temperature=0)
    assert result.served_by == "large"
    (reading,) = result.verifications
    perf = llama_cpp.llama_perf_context(large._instances[0].llama.ctx)
    prompt_tokens = result.usage.prompt_tokens
    evaluated = perf.n_p_eval + perf.n_eval
    # The reading evaluates the prompt and the answer (less its last token), the answer 1 replayed prompt
    # token and each generated token; a second prefill would add the prompt's tokens once more.
    assert reading.evaluated_tokens == prompt_tokens + reading.answer_tokens - 1
    assert evaluated <= reading.evaluated_tokens + 1 + result.usage.completion_tokens
    assert prompt_tokens > 1 + result.usage.completion_tokens


@pytest.mark.model
async def test_the_ledger_records_the_verification(real_tiers, tmp_path: Path) -> None:
    tiers, _ = real_tiers
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    try:
        with anyio.fail_after(120):
            await Dispatcher(tiers, ledger=ledger).generate("small", WRONG, temperature=0)
    finally:
        ledger.close()
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        hops = conn.execute("SELECT position, tier, outcome, escalation_reason, prompt_tokens, generation_s, "
                            "verification FROM hops ORDER BY id").fetchall()
        (reasons,) = conn.execute("SELECT escalation_reasons FROM calls").fetchone()
    assert [h[:4] for h in hops] == [(0, "small", "escalated", "rejected"), (0, "large", "rejected", None),
                                     (1, "large", "answered", None)]
    reading = hops[1]
    assert reading[4] > 0 and reading[5] > 0 and reading[6] < 0.1
    assert reasons == "rejected"


def answer(prob: float = 0.6) -> Completion:
    return Completion("an answer", "stop", 10, 3, (math.log(prob),) * 3)


class Verifier(ScriptedBackend):
    """A scripted tier that also reads answers: each reading is the next of `readings`."""

    def __init__(self, replies: list, readings: list):
        super().__init__(replies)
        self.readings = list(readings)
        self.read: list[tuple[GenerationRequest, str]] = []

    async def score(self, request, answer, control=None):  # noqa: ANN001
        self.read.append((request, answer))
        reading = self.readings.pop(0)
        if isinstance(reading, Exception):
            raise reading
        return reading


def read_as(prob: float, tokens: int = 3) -> ScoredAnswer:
    return ScoredAnswer((math.log(prob),) * tokens, (math.log(max(prob, 0.5)),) * tokens, 10, 10 + tokens)


def scripted(small: list, large: list, readings: list, **policy) -> tuple[TierRegistry, Verifier]:
    verifier = Verifier(large, readings)
    fields = {"verify_with": "large", "verify_statistic": "mean", "min_verification": 0.5, **policy}
    tiers = TierRegistry([Tier("small", ScriptedBackend(small), "small", 100, 0.2, Policy(escalate_to="large", **fields)),
                          Tier("large", verifier, "large", 100, 0.2)])
    return tiers, verifier


async def test_an_answer_confident_enough_is_kept_without_a_reading() -> None:
    tiers, verifier = scripted([answer(0.9)], [], [], verify_below=0.8)
    result = await Dispatcher(tiers).generate("small", "q")
    assert result.served_by == "small" and result.verifications == [] and verifier.read == []


async def test_an_unsure_answer_is_read_and_rejected_with_its_confidence_on_the_hand_over() -> None:
    tiers, verifier = scripted([answer(0.6)], [answer(0.9)], [read_as(0.2)], verify_below=0.8)
    result = await Dispatcher(tiers).generate("small", "q", system="sys")
    assert result.served_by == "large"
    assert [(e.reason, e.confidence) for e in result.escalations] == [("rejected", pytest.approx(0.6))]
    (request, text), = verifier.read
    assert (request.prompt, request.system, text) == ("q", "sys", "an answer")


async def test_readings_are_counted_in_the_metrics() -> None:
    from mcp_tiered.server.metrics import Metrics

    tiers, _ = scripted([answer(), answer()], [answer(0.9)], [read_as(0.9), read_as(0.2)])
    metrics = Metrics(tiers)
    dispatcher = Dispatcher(tiers, metrics=metrics)
    await dispatcher.generate("small", "q1")
    await dispatcher.generate("small", "q2")
    text = metrics.exposition().decode()
    assert 'mcp_tiered_verifications_total{by="large",tier="small",verdict="kept"} 1.0' in text
    assert 'mcp_tiered_verifications_total{by="large",tier="small",verdict="rejected"} 1.0' in text
    assert 'mcp_tiered_escalations_total{from_tier="small",reason="rejected",to_tier="large"} 1.0' in text


async def test_a_verifier_that_fails_keeps_the_answer_with_a_note() -> None:
    tiers, _ = scripted([answer()], [], [BusyError("tier large is busy")])
    result = await Dispatcher(tiers).generate("small", "q")
    assert result.served_by == "small" and result.verifications == [] and result.escalations == []
    assert result.escalation_note == ("verification by large failed (tier large is busy); the answer of small is "
                                      "kept unverified")


async def test_escalate_never_keeps_the_answer_unread() -> None:
    tiers, verifier = scripted([answer()], [], [read_as(0.1)])
    result = await Dispatcher(tiers).generate("small", "q", escalate="never")
    assert result.served_by == "small" and verifier.read == []


async def test_an_answer_below_min_confidence_escalates_without_a_reading() -> None:
    tiers, verifier = scripted([answer(0.2)], [answer(0.9)], [], min_confidence=0.3)
    result = await Dispatcher(tiers).generate("small", "q")
    assert [e.reason for e in result.escalations] == ["low_confidence"] and verifier.read == []


def test_next_step_reads_a_kept_answer_before_it_stops() -> None:
    chain = ("small", "large", "cloud")
    assert next_step(Standing(chain, 0, None, "auto", verifier="large")) == Verify("large")
    assert next_step(Standing(chain, 0, None, "auto")) == Stop()
    assert next_step(Standing(chain, 0, "rejected", "auto")) == HandOn("large", "rejected")


def test_next_step_says_why_a_wanted_step_is_not_taken() -> None:
    chain = ("small", "large")
    assert next_step(Standing(chain, 0, None, "auto", verifier="large", seconds_left=0)) == Stop(
        "verification of the answer of small by large was not made: the call's deadline had passed")
    assert next_step(Standing(chain, 0, "rejected", "auto", next_blocked="the call is local_only")) == Stop(
        "escalation from small to large (rejected) was not made: the call is local_only")
    assert next_step(Standing(chain, 1, "low_confidence", "auto")) == Stop()
    assert next_step(Standing(chain, 0, "rejected", "never")) == Stop()


@pytest.mark.model
async def test_rejected_and_the_reading_reach_the_client(write_config, smollm2: Path, qwen: Path) -> None:
    config = write_config(f"""
[tiers.small]
model = "{smollm2}"
description = "small"
n_ctx = 1024
max_tokens = 48
escalate_to = "large"
verify_with = "large"
verify_statistic = "quantile"
min_verification = 0.1

[tiers.large]
model = "{qwen}"
description = "large"
n_ctx = 2048
max_tokens = 48
""")
    with anyio.fail_after(120):
        async with stdio_server(config) as client:
            result = await client.call_tool("generate_small", {"prompt": WRONG, "temperature": 0})
    content = result.structured_content
    assert not result.is_error and content["served_by"] == "large"
    assert [e["reason"] for e in content["escalations"]] == ["rejected"]
    (reading,) = content["verifications"]
    assert reading["by"] == "large" and reading["kept"] is False
