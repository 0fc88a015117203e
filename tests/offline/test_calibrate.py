from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mcp_tiered.offline import calibrate
from mcp_tiered import cli
from mcp_tiered.offline.calibrate import Outcome
from mcp_tiered.calls.confidence import confidence
from mcp_tiered.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "answers", "right"),
    [("The answer is 22.", ["22"], True), ("220", ["22"], False), ("2.22", ["22"], False),
     ("It is beijing", ["Beijing"], True), ("Beijingese", ["Beijing"], False), ("Symbol: C", ["C"], True),
     ("Ca", ["C"], False)],
)
def test_answer_counts_when_it_appears_as_a_whole_word_or_number(text: str, answers: list[str], right: bool) -> None:
    assert calibrate.is_correct(text, answers) is right


def test_confidence_statistics_on_known_token_probabilities() -> None:
    logprobs = [math.log(p) for p in (0.9, 0.5, 0.8, 0.1)]
    assert confidence(logprobs, "mean") == pytest.approx((0.9 * 0.5 * 0.8 * 0.1) ** 0.25)
    assert confidence(logprobs, "min") == pytest.approx(0.1)
    assert confidence(logprobs, "first") == pytest.approx(0.9)
    assert confidence(logprobs, "quantile", 0.5) == pytest.approx(math.exp((math.log(0.5) + math.log(0.8)) / 2))
    assert confidence([], "mean") is None


def test_auroc_counts_pairs_ranked_right_and_ties_as_half() -> None:
    assert calibrate.auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert calibrate.auroc([0.1, 0.9], [True, False]) == 0.0
    assert calibrate.auroc([0.5, 0.5], [True, False]) == 0.5


def test_cascade_keeps_the_most_calls_that_still_reach_the_accuracy_floor() -> None:
    scores = [0.9, 0.8, 0.7, 0.3]
    first_ok = [True, True, False, False]
    last_ok = [True, True, True, False]
    curve = calibrate.cascade_curve(scores, first_ok, last_ok)
    best = calibrate.best_threshold(curve, floor=0.75)
    assert (best.threshold, best.share_kept, best.accuracy) == (0.8, 0.5, 0.75)


def test_threshold_for_escalation_rate() -> None:
    assert calibrate.threshold_for_escalation([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], 0.3) == 0.4


def test_malformed_dataset_line_is_named(tmp_path: Path) -> None:
    dataset = tmp_path / "set.jsonl"
    dataset.write_text('{"prompt": "q", "answers": ["a"]}\n{"prompt": "q"}\n')
    with pytest.raises(ConfigError, match=r"set\.jsonl:2: each line must be a JSON object with a string 'prompt'"):
        calibrate.load_dataset(dataset)


def test_a_dataset_of_one_item_is_refused_in_one_sentence(tmp_path: Path) -> None:
    dataset = tmp_path / "set.jsonl"
    dataset.write_text('{"prompt": "q", "answers": ["a"]}\n')
    with pytest.raises(ConfigError, match=r"set\.jsonl: the dataset has 1 item; calibration needs at least 2"):
        calibrate.load_dataset(dataset)


def write_dataset(folder: Path, items: int) -> Path:
    """`items` prompts q0, q1, … each answered by "a", as set.jsonl in `folder`."""
    dataset = folder / "set.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": f"q{i}", "answers": ["a"]}) + "\n" for i in range(items)))
    return dataset


def write_outcomes(folder: Path, name: str, rows: list[tuple[bool, float]]) -> None:
    folder.mkdir(exist_ok=True)
    calibrate.save_outcomes(folder / f"{name}.jsonl", [Outcome("x", ok, (math.log(p),), "stop") for ok, p in rows])


def test_calibrate_command_reports_auroc_thresholds_and_the_cascade(write_config, tmp_path: Path, capsys) -> None:
    config = write_config('[tiers.small]\nmodel = "s.gguf"\ndescription = "s"\nescalate_to = "large"\n'
                          '[tiers.large]\nmodel = "l.gguf"\ndescription = "l"\n')
    dataset = write_dataset(tmp_path, 8)
    small = [(True, 0.9), (True, 0.9), (False, 0.2), (False, 0.3), (True, 0.8), (True, 0.85), (False, 0.1), (False, 0.4)]
    write_outcomes(tmp_path / "out", "small", small)
    write_outcomes(tmp_path / "out", "large", [(True, 0.9)] * 8)
    code = cli.main(["calibrate", "--config", str(config), "--tier", "small", "--dataset", str(dataset),
                     "--outcomes", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert "small: accuracy 50.0%" in out and "large: accuracy 100.0%" in out
    assert "mean             1.000" in out  # the scores separate right from wrong perfectly
    assert "recommended for [tiers.small]:" in out and "keeps 38% of calls on small" in out  # 50 % and 25 % in the two folds


FOUR_QUESTIONS = [("What is 2 + 2? Answer with the number only.", "4"), ("What is the capital of France?", "Paris"),
                  ("What is the chemical symbol of gold?", "Au"), ("What is 97 * 89?", "8633")]


def calibrate_small(config: Path, folder: Path, max_tokens: int) -> int:
    """`mcp-tiered calibrate` on tier small over FOUR_QUESTIONS, outcomes saved in folder/out."""
    dataset = folder / "set.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": p, "answers": [a]}) + "\n" for p, a in FOUR_QUESTIONS))
    return cli.main(["calibrate", "--config", str(config), "--tier", "small", "--dataset", str(dataset),
                     "--max-tokens", str(max_tokens), "--outcomes", str(folder / "out")])


@pytest.mark.model
def test_calibrate_runs_a_real_tier_over_a_dataset(write_config, smollm2: Path, tmp_path: Path, capsys) -> None:
    config = write_config(f"[tiers.small]\nmodel = \"{smollm2}\"\ndescription = \"s\"\nn_ctx = 1024\n")
    code = calibrate_small(config, tmp_path, 24)
    assert code == 0
    assert "4 items;" in capsys.readouterr().out
    assert len((tmp_path / "out" / "small.jsonl").read_text().splitlines()) == 4


@pytest.mark.model
def test_calibrate_runs_a_tier_on_llama_server(write_config, smollm2: Path, tmp_path: Path, capsys) -> None:
    config = write_config(f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "s"\nn_ctx = 1024\n'
                          'engine = "llama-server"\nparallel = 1\n')
    code = calibrate_small(config, tmp_path, 8)
    assert code == 0
    outcomes = [json.loads(line) for line in (tmp_path / "out" / "small.jsonl").read_text().splitlines()]
    assert len(outcomes) == 4 and all(outcome["logprobs"] for outcome in outcomes)


def test_a_rule_keeps_reads_or_escalates_by_its_zones_and_estimates_latency_and_tokens() -> None:
    from mcp_tiered.offline.calibrate_verify import Rule, Signals, apply

    signals = Signals(own=[0.1, 0.5, 0.5, 0.9], verified={"mean": [0.9, 0.8, 0.1, 0.0]},
                      first_ok=[True, True, False, True], last_ok=[True, True, True, False],
                      first_s=[1.0] * 4, verify_s=[2.0] * 4, last_s=[4.0] * 4, last_tokens=[10, 10, 10, 10])
    # own < 0.2: escalate unread; own ≥ 0.8: keep unread; else read, keep when the verifier says ≥ 0.5.
    result = apply(Rule("mean", 0.2, 0.8, "mean", 0.5), signals, range(4))
    assert (result.kept, result.verified) == (0.5, 0.5)  # items 1 and 3 kept; items 1 and 2 read
    assert result.accuracy == 1.0 and result.of_last == 4 / 3  # last, first, last, first: all right; large alone 3
    assert result.latency_s == (5 + 3 + 7 + 1) / 4 and result.last_only_latency_s == 4.0
    assert result.last_tokens == 0.5


def test_calibrate_with_a_verifier_prints_its_signals_the_rules_and_the_settings(write_config, tmp_path: Path,
                                                                                  capsys) -> None:
    config = write_config('[tiers.small]\nmodel = "s.gguf"\ndescription = "s"\nescalate_to = "large"\n'
                          'verify_with = "large"\n[tiers.large]\nmodel = "l.gguf"\ndescription = "l"\n')
    dataset = write_dataset(tmp_path, 8)
    # small is surer of its wrong answers than of its right ones; the verifier tells them apart perfectly.
    small = [(True, 0.5), (True, 0.55), (False, 0.9), (False, 0.8), (True, 0.4), (True, 0.6), (False, 0.7), (False, 0.65)]
    write_outcomes(tmp_path / "out", "small", small)
    write_outcomes(tmp_path / "out", "large", [(True, 0.9)] * 8)
    calibrate.save_outcomes(tmp_path / "out" / "small.read-by-large.jsonl", [
        calibrate.Reading((math.log(0.9 if ok else 0.05),) * 2, (math.log(0.9),) * 2, 0.1) for ok, _ in small])
    code = cli.main(["calibrate", "--config", str(config), "--tier", "small", "--dataset", str(dataset),
                     "--outcomes", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert "verification of small's answers by large" in out and "large mean           1.000" in out
    assert "small confidence alone                         0%         100.0%        0%" in out
    assert "large verifies every answer                   50%         100.0%      100%" in out
    assert ('recommended for [tiers.small]: confidence = "mean", min_confidence = 0, verify_with = "large", '
            'verify_statistic = "top_share", min_verification = 0.5') in out


CLOUD_CHAIN = ('[tiers.small]\nmodel = "s.gguf"\ndescription = "s"\nescalate_to = "cloud"\n'
               '[cloud]\nmodel = "claude-test"\n')


def test_calibrating_a_tier_billed_per_token_asks_for_chain(write_config, tmp_path: Path, capsys) -> None:
    dataset = write_dataset(tmp_path, 2)
    code = cli.main(["calibrate", "--config", str(write_config(CLOUD_CHAIN)), "--tier", "cloud", "--dataset", str(dataset)])
    assert code == 1
    assert capsys.readouterr().err == ("error: --tier: cloud is billed per token, so it is calibrated only when --chain "
                                       "names it\n")


def test_a_chain_through_a_claude_tier_without_its_key_is_one_sentence(write_config, tmp_path: Path, capsys,
                                                                        monkeypatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    dataset = write_dataset(tmp_path, 2)
    code = cli.main(["calibrate", "--config", str(write_config(CLOUD_CHAIN)), "--tier", "small", "--chain",
                     "small,cloud", "--dataset", str(dataset)])
    assert code == 1
    assert capsys.readouterr().err == ("error: --chain: the cloud tier is disabled because $ANTHROPIC_API_KEY is not "
                                       "set\n")
