"""The ladder scenario's parts, without processes: the mock model's topic quality, the
demo's dataset judge, the golden dataset and the ladder's policy."""

from __future__ import annotations

from statistics import mean

import pytest
from langfuse import Evaluation

from coalmine.demo.agent import mock_llm
from coalmine.demo.dataset import DEFAULT_NAME, item_id, items
from coalmine.demo.judge import answer_text, helpfulness, split_sentences
from coalmine.demo.questions import QUESTIONS, REFUND_QUESTIONS, chat_body
from coalmine.demo.scenarios import (
    DATASET,
    JUDGE,
    SCENARIOS,
    STABLE_PROMPT,
    Outcome,
    Rung,
    policy_yaml,
)
from controller.ladder.evaluators import FunctionCache, PythonScorer
from policies.loader import load_policy_text

REFUND_TRAITS = {"quality": 0.85, "topics": {"refund": 0.3}}


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------ mock model topics


def test_a_config_s_topics_are_read_in_lower_case_and_sorted() -> None:
    traits = mock_llm.PromptTraits.of("x", {"quality": 0.8, "topics": {"Refund": 0.3, "email": 2}})
    assert traits.topics == (("email", 1.0), ("refund", 0.3))
    assert traits.quality == 0.8


@pytest.mark.parametrize(
    "topics",
    [
        None,
        "refund",
        ["refund"],
        {"refund": "low"},
        {"refund": True},
        {"": 0.3},
        {"two words": 0.3},
    ],
)
def test_topics_that_are_not_a_word_with_a_number_are_ignored(topics: object) -> None:
    assert mock_llm.PromptTraits.of("x", {"topics": topics}).topics == ()


def test_a_message_mentioning_a_topic_gets_the_topic_s_quality() -> None:
    traits = mock_llm.PromptTraits.of("x", REFUND_TRAITS)
    assert traits.quality_for(_user("Can I get a REFUND?")) == 0.3
    assert traits.quality_for(_user("Refunds take how long?")) == 0.3
    assert traits.quality_for(_user("Where are my invoices?")) == 0.85
    # a word that only contains the topic is another word
    assert traits.quality_for(_user("a nonrefundable fee")) == 0.85
    # only what the user says counts
    said_by_agent = [{"role": "assistant", "content": "No refund."}, *_user("Thanks")]
    assert traits.quality_for(said_by_agent) == 0.85


def test_several_topics_mentioned_take_the_lowest_quality() -> None:
    traits = mock_llm.PromptTraits.of("x", {"topics": {"refund": 0.3, "invoice": 0.6}})
    assert traits.quality_for(_user("refund on my invoice")) == 0.3
    assert traits.quality_for(_user("my invoice")) == 0.6


def test_answers_on_a_topic_are_as_good_as_the_topic_and_others_unchanged() -> None:
    plain = mock_llm.PromptTraits.of("p", {"quality": 0.85})
    topical = mock_llm.PromptTraits.of("p", REFUND_TRAITS)
    for question in REFUND_QUESTIONS:
        answer = mock_llm.complete("p", _user(question), topical, request_key="r")
        assert abs(answer.quality - 0.3) <= mock_llm.QUALITY_JITTER / 2
    for question in QUESTIONS:
        with_topics = mock_llm.complete("p", _user(question), topical, request_key="r")
        without = mock_llm.complete("p", _user(question), plain, request_key="r")
        assert with_topics == without


# ------------------------------------------------------------------ the dataset judge


def _completion(text: str) -> dict[str, object]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def test_the_judge_grades_the_share_of_helpful_sentences() -> None:
    helpful, vague = mock_llm.HELPFUL_SENTENCES, mock_llm.VAGUE_SENTENCES
    text = f"{helpful[0]} {vague[0]} {helpful[1]}"
    grade = helpfulness(input={}, output=_completion(text), expected_output=None, metadata=None)
    assert isinstance(grade, Evaluation)
    assert grade.name == "helpfulness"
    assert grade.value == pytest.approx(2 / 3, abs=1e-6)
    assert grade.comment == "2 of 3 sentences helpful"


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (mock_llm.HELPFUL_SENTENCES[1], 1.0),
        ({"role": "assistant", "content": mock_llm.VAGUE_SENTENCES[2]}, 0.0),
        (None, 0.0),
        ({"error": {"message": "The model failed"}}, 0.0),
        (_completion(""), 0.0),
    ],
)
def test_the_judge_reads_text_messages_and_nothing(output: object, expected: float) -> None:
    assert helpfulness(input=None, output=output).value == expected


def test_the_judge_grades_a_mock_answer_by_what_the_mock_wrote() -> None:
    traits = mock_llm.PromptTraits(quality=0.5)
    for question in QUESTIONS:
        answer = mock_llm.complete("p", _user(question), traits, request_key="r")
        sentences = split_sentences(answer.text)
        helpful = sum(s in mock_llm.HELPFUL_SENTENCES for s in sentences)
        assert sentences and all(
            s in mock_llm.HELPFUL_SENTENCES + mock_llm.VAGUE_SENTENCES for s in sentences
        )
        assert helpfulness(input=None, output=answer.text).value == pytest.approx(
            helpful / len(sentences), abs=1e-6
        )


def test_the_dataset_rung_loads_and_calls_the_judge_as_the_policy_names_it() -> None:
    scorer = PythonScorer(FunctionCache().get(JUDGE), "helpfulness")
    text = " ".join(mock_llm.HELPFUL_SENTENCES[:2])
    evaluation = scorer(input={}, output=_completion(text), expected_output=None, metadata=None)
    assert (evaluation.value, evaluation.data_type) == (1.0, "NUMERIC")


def test_answer_text_and_sentences() -> None:
    assert answer_text(_completion("Hi.")) == "Hi."
    assert answer_text({"choices": []}) == ""
    assert split_sentences("One. Two!  Three? ") == ["One.", "Two!", "Three?"]


# ------------------------------------------------------------------ the golden dataset


def test_the_dataset_has_sixty_distinct_chat_bodies_and_no_refund_request() -> None:
    found = items()
    assert len(found) == 60
    bodies = [item["input"] for item in found]
    assert len({str(body) for body in bodies}) == 60
    assert all(set(body) == {"model", "messages"} for body in bodies)
    subtle = mock_llm.PromptTraits.of("x", REFUND_TRAITS)
    assert {subtle.quality_for(body["messages"]) for body in bodies} == {0.85}
    assert {subtle.quality_for(chat_body(q)["messages"]) for q in REFUND_QUESTIONS} == {0.3}
    assert len({item_id(DEFAULT_NAME, index) for index in range(60)}) == 60


def _dataset_grades(text: str, config: dict[str, object]) -> list[float]:
    traits = mock_llm.PromptTraits.of(text, config)
    grades = []
    for item in items():
        answer = mock_llm.complete(text, item["input"]["messages"], traits, request_key="r")
        grades.append(float(helpfulness(input=item["input"], output=answer.text).value))
    return grades


def test_on_the_dataset_only_the_clearly_bad_candidate_is_worse() -> None:
    ladder = SCENARIOS["ladder"]
    stable = ladder.prompts[0]
    baseline = mean(_dataset_grades(stable.text, stable.config))
    means = {
        candidate.name: mean(_dataset_grades(candidate.prompt.text, candidate.prompt.config))
        for candidate in ladder.candidates
    }
    assert means["clearly bad"] < baseline - 0.2
    assert abs(means["subtly bad"] - baseline) < 0.05
    assert abs(means["good"] - baseline) < 0.05


# ------------------------------------------------------------------ the scenario


def test_the_ladder_scenario_and_its_policy() -> None:
    ladder = SCENARIOS["ladder"]
    assert ladder.prompts[0].text == STABLE_PROMPT
    assert [(c.expected, c.rung) for c in ladder.candidates] == [
        (Outcome.ROLLED_BACK, Rung.DATASET),
        (Outcome.ROLLED_BACK, Rung.SHADOW),
        (Outcome.PROMOTED, Rung.APPROVAL),
    ]
    assert all(c.prompt.labels == ("canary",) for c in ladder.candidates)
    text = policy_yaml(
        ladder,
        stable="http://127.0.0.1:8001",
        canary="http://127.0.0.1:8002",
        staging="http://127.0.0.1:8003",
        speed=1.0,
    )
    policy = load_policy_text(text, "ladder.yaml")
    assert policy.dataset is not None and policy.dataset.name == DATASET
    assert policy.dataset.evaluator.python == JUDGE
    assert policy.shadow is not None and policy.shadow.gate is not None
    assert str(policy.shadow.upstream).rstrip("/") == "http://127.0.0.1:8003"
    assert policy.shadow.percent == 100
    assert policy.approval is not None
