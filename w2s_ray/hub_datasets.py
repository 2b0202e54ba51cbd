"""Formatters: source examples → binary rows ``{text, label, group?}``.

Shared by the offline BIG-bench sets and the Hugging Face hub sets (whose
column names follow each hub dataset's card). Three shapes cover them all:

* :func:`per_example`: one example → at most one row (classification sets);
* :func:`multiple_choice`: one question → the right answer (label 1) and one
  wrong answer picked by a stable hash (label 0), sharing the question's
  group so a split never separates them (they leak otherwise);
* :func:`preference_pairs`: a (chosen, rejected) pair → both orders, "A is
  better" (1) and the swap (0), sharing a group.

No randomness anywhere: the same examples always give the same rows, so the
ids (:func:`text_id`) and the splits built on them are reproducible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Example = Mapping[str, Any]
Row = dict[str, Any]
Formatter = Callable[[Iterable[Example]], Iterator[Row]]


def text_id(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def unit_hash(salt: str, value: str) -> int:
    """A stable 64-bit hash: stands in for a seeded RNG so rows never depend on order."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{value}".encode()).digest()[:8], "big")


# -- generic shapes ----------------------------------------------------------------


def per_example(fn: Callable[[Example], Row | None]) -> Formatter:
    """Map each example to one row; ``fn`` returns None to drop an example."""

    def fmt(examples: Iterable[Example]) -> Iterator[Row]:
        for ex in examples:
            row = fn(ex)
            if row is not None:
                yield row

    return fmt


@dataclass(frozen=True)
class Choice:
    """One multiple-choice question: the prompt, its right answer and the wrong ones."""

    prompt: str
    right: str
    wrong: Sequence[str]


def choice_pair(q: Choice, template: str) -> list[Row]:
    """The right answer (1) and one hashed wrong answer (0), in the prompt's group.

    ``template`` has ``{q}`` (the prompt) and ``{a}`` (the answer). Wrong
    answers equal to the right one are ignored; no wrong answer → no rows.
    """
    wrong = sorted({w for w in q.wrong if w and w != q.right})
    if not q.right or not wrong:
        return []
    pick = wrong[unit_hash("wrong", q.prompt) % len(wrong)]
    group = text_id(q.prompt)
    return [
        {"text": template.format(q=q.prompt, a=q.right), "label": 1, "group": group},
        {"text": template.format(q=q.prompt, a=pick), "label": 0, "group": group},
    ]


def multiple_choice(extract: Callable[[Example], Choice | None], template: str = "{q}\nAnswer: {a}") -> Formatter:
    """Multiple choice → (question, answer) pairs (see :func:`choice_pair`)."""

    def fmt(examples: Iterable[Example]) -> Iterator[Row]:
        for ex in examples:
            q = extract(ex)
            if q is not None:
                yield from choice_pair(q, template)

    return fmt


def preference_rows(context: str, better: str, worse: str) -> list[Row]:
    """Both orders of a comparison: "A is better" (1) and the swap (0), one group.

    The responses come before the context so truncating a long conversation
    from the right never cuts the two texts being compared.
    """
    if better == worse:
        return []
    group = text_id(f"{context}\x00{better}\x00{worse}")

    def text(a: str, b: str) -> str:
        tail = f"\n\nConversation:\n{context}" if context else ""
        return f"Which response is better, A or B?\n\nA: {a}\n\nB: {b}{tail}"

    return [{"text": text(better, worse), "label": 1, "group": group},
            {"text": text(worse, better), "label": 0, "group": group}]


def preference_pairs(split: Callable[[Example], tuple[str, str, str] | None]) -> Formatter:
    """Pairwise preferences; ``split`` gives (context, better, worse) or None."""

    def fmt(examples: Iterable[Example]) -> Iterator[Row]:
        for ex in examples:
            parts = split(ex)
            if parts is not None:
                yield from preference_rows(*parts)

    return fmt


def _clean(value: Any) -> str:
    return str(value).strip()


def hf_columns(text: str | tuple[str, ...], label: str, sep: str = " ") -> Formatter:
    """Rows whose text is one or more columns joined by ``sep`` and an int label."""
    cols = (text,) if isinstance(text, str) else text
    return per_example(lambda ex: {"text": sep.join(_clean(ex[c]) for c in cols), "label": int(ex[label])})


# -- the reference code's five (openai/weak-to-strong) --------------------------------


boolq = per_example(lambda ex: {"text": f"Passage: {ex['passage']}\nQuestion: {ex['question']}?",
                                "label": int(bool(ex["answer"]))})


def _sciq(ex: Example) -> Choice:
    wrong = [ex["distractor1"], ex["distractor2"], ex["distractor3"]]
    return Choice(f"Q: {_clean(ex['question'])}", _clean(ex["correct_answer"]), [_clean(w) for w in wrong])


sciq = multiple_choice(_sciq, "{q} A: {a}")

_NONE_OF_THE_ABOVE = "none of the above"


def _cosmos_qa(ex: Example) -> Choice | None:
    """Skip "None of the above" answers: shown alone, without the other choices, they mean nothing."""
    answers = [_clean(ex[f"answer{i}"]) for i in range(4)]
    right = answers[int(ex["label"])]
    if right.lower().startswith(_NONE_OF_THE_ABOVE):
        return None
    wrong = [a for a in answers if not a.lower().startswith(_NONE_OF_THE_ABOVE)]
    return Choice(f"Context: {_clean(ex['context'])}\nQuestion: {_clean(ex['question'])}", right, wrong)


cosmos_qa = multiple_choice(_cosmos_qa)

_TURN = "\n\nAssistant:"


def _hh_split(ex: Example) -> tuple[str, str, str] | None:
    """Split two hh-rlhf transcripts into their shared conversation and final replies.

    Both transcripts repeat the conversation and differ in the last assistant
    turn; comparing whole transcripts wastes the context on the duplicate. If
    the prefixes differ, the whole transcripts are compared instead.
    """
    chosen, rejected = ex["chosen"], ex["rejected"]
    cut = chosen.rfind(_TURN)
    if cut >= 0 and rejected[:cut + len(_TURN)] == chosen[:cut + len(_TURN)]:
        start = cut + len(_TURN)
        return chosen[:cut].strip(), chosen[start:].strip(), rejected[start:].strip()
    return "", chosen.strip(), rejected.strip()


anthropic_hh = preference_pairs(_hh_split)


# -- follow-up literature (EleutherAI/w2s and others) ---------------------------------


def _anli(ex: Example) -> Row | None:
    """Entailment (1) vs contradiction (0); neutral (1) is dropped."""
    label = int(ex["label"])
    if label not in (0, 2):
        return None
    return {"text": f"Premise: {_clean(ex['premise'])}\nHypothesis: {_clean(ex['hypothesis'])}",
            "label": int(label == 0)}


anli = per_example(_anli)

ethics_commonsense = per_example(
    lambda ex: {"text": f"{_clean(ex['input'])}\n\nWas that clearly morally wrong?", "label": int(ex["label"])})
ethics_deontology = per_example(
    lambda ex: {"text": f"Scenario: {_clean(ex['scenario'])}\nExcuse: {_clean(ex['excuse'])}\n\n"
                        "Is the excuse reasonable?", "label": int(ex["label"])})
ethics_justice = per_example(
    lambda ex: {"text": f"{_clean(ex['scenario'])}\n\nIs this reasonable and just?", "label": int(ex["label"])})


def _ethics_virtue(ex: Example) -> Row:
    """The hub's scenario is ``"<sentence> [SEP] <trait>"``."""
    sentence, _, trait = str(ex["scenario"]).partition("[SEP]")
    return {"text": f"Scenario: {sentence.strip()}\nTrait: {trait.strip()}\n\nDoes the trait fit the person?",
            "label": int(ex["label"])}


ethics_virtue = per_example(_ethics_virtue)


def _hellaswag(ex: Example) -> Choice:
    endings = [_clean(e) for e in ex["endings"]]
    right = endings[int(ex["label"])]
    return Choice(f"{_clean(ex['activity_label'])}: {_clean(ex['ctx'])}", right, endings)


hellaswag = multiple_choice(_hellaswag, "{q} {a}")


def _piqa(ex: Example) -> Choice:
    sols = [_clean(ex["sol1"]), _clean(ex["sol2"])]
    return Choice(f"Goal: {_clean(ex['goal'])}", sols[int(ex["label"])], sols)


piqa = multiple_choice(_piqa, "{q}\nSolution: {a}")


def _quail(ex: Example) -> Choice:
    answers = [_clean(a) for a in ex["answers"]]
    return Choice(f"{_clean(ex['context'])}\n\nQuestion: {_clean(ex['question'])}",
                  answers[int(ex["correct_answer_id"])], answers)


quail = multiple_choice(_quail)


def _social_i_qa(ex: Example) -> Choice:
    """The hub's label is the string "1", "2" or "3" (answerA..C)."""
    answers = [_clean(ex[k]) for k in ("answerA", "answerB", "answerC")]
    return Choice(f"{_clean(ex['context'])}\nQuestion: {_clean(ex['question'])}",
                  answers[int(ex["label"]) - 1], answers)


social_i_qa = multiple_choice(_social_i_qa)


def _dream(ex: Example) -> Choice:
    dialogue = "\n".join(_clean(turn) for turn in ex["dialogue"])
    return Choice(f"{dialogue}\n\nQuestion: {_clean(ex['question'])}", _clean(ex["answer"]),
                  [_clean(c) for c in ex["choice"]])


dream = multiple_choice(_dream)


def _mc_taco(ex: Example) -> Row:
    """Several candidate answers per question: the question is the group, so they stay in one split."""
    prompt = f"{_clean(ex['sentence'])}\nQuestion: {_clean(ex['question'])}"
    return {"text": f"{prompt}\nAnswer: {_clean(ex['answer'])}\nIs the answer plausible?",
            "label": int(ex["label"]), "group": text_id(prompt)}


mc_taco = per_example(_mc_taco)


def _openbookqa(ex: Example) -> Choice:
    texts = [_clean(t) for t in ex["choices"]["text"]]
    right = texts[list(ex["choices"]["label"]).index(ex["answerKey"])]
    return Choice(f"Q: {_clean(ex['question_stem'])}", right, texts)


openbookqa = multiple_choice(_openbookqa, "{q} A: {a}")
