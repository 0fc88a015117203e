"""`reported.checked`: what an engine reports is made valid before the ledger, metrics, budget or policy see it."""

from __future__ import annotations

import math

import pytest

from mcp_tiered.backends import Completion, GenerationRequest
from mcp_tiered.backends.reported import LOGPROB_FLOOR, checked, prompt_bound

REQUEST = GenerationRequest("Capital of France?", "Be brief.", 16, 0.0)


def test_a_valid_completion_is_returned_as_it_is() -> None:
    completion = Completion("Paris.", "stop", 20, 2, (-0.1, -0.0))
    assert checked(completion, REQUEST) == (completion, [])


@pytest.mark.parametrize("value", [1e30, -5, math.inf, math.nan, 2.5, True, "12"])
def test_a_count_that_is_no_token_count_becomes_its_bound(value: object) -> None:
    fixed, problems = checked(Completion("Paris.", "stop", value, value), REQUEST)  # type: ignore[arg-type]
    assert (fixed.prompt_tokens, fixed.completion_tokens) == (prompt_bound(REQUEST), REQUEST.max_tokens)
    assert len(problems) == 2 and problems[0].startswith("prompt_tokens ")


def test_more_completion_tokens_than_max_tokens_is_invalid() -> None:
    fixed, problems = checked(Completion("Paris.", "stop", 20, 17), REQUEST)
    assert fixed.completion_tokens == 16 and problems == ["completion_tokens 17 is not a token count between 0 and 16"]


def test_log_probabilities_that_are_not_numbers_below_zero_become_the_floor() -> None:
    fixed, problems = checked(Completion("Paris.", "stop", 20, 4, (math.nan, math.inf, 3.0, -math.inf)), REQUEST)
    assert fixed.token_logprobs == (LOGPROB_FLOOR, LOGPROB_FLOOR, LOGPROB_FLOOR, LOGPROB_FLOOR)
    assert problems == ["3 of 4 token log-probabilities are not numbers ≤ 0 (such as nan)"]


def test_rounding_just_above_zero_is_kept_at_zero() -> None:
    fixed, problems = checked(Completion("Paris.", "stop", 20, 1, (1e-7,)), REQUEST)
    assert fixed.token_logprobs == (0.0,) and problems == []


def test_an_integer_too_large_for_a_float_is_invalid_not_an_overflow() -> None:
    huge = 10**400  # JSON allows it, and json.loads makes it an int
    fixed, problems = checked(Completion("Paris.", "stop", huge, huge, (-huge, -0.5)), REQUEST)
    assert (fixed.prompt_tokens, fixed.completion_tokens) == (prompt_bound(REQUEST), REQUEST.max_tokens)
    assert fixed.token_logprobs == (LOGPROB_FLOOR, -0.5) and len(problems) == 2


@pytest.mark.parametrize("reader, event", [("chat", {"choices": [{"delta": {"content": ["x"]}}]}),
                                           ("native", {"content": {"x": 1}})])
def test_content_that_is_not_text_is_a_malformed_event(reader: str, event: dict) -> None:
    from mcp_tiered.backends.wire.llama_api import NativeReader
    from mcp_tiered.backends.wire.openai_api import ChatReader

    with pytest.raises(ValueError, match="not text"):
        (ChatReader() if reader == "chat" else NativeReader()).feed(event)
