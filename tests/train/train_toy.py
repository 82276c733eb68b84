"""Helpers for the trainer tests: toy TOFU-style data (a forget author with paraphrases, a retain set)."""

from __future__ import annotations

import json
from pathlib import Path

# Fictional-author facts in the fixture tokenizer's own words, so answers are a handful of tokens each.
FORGET = [
    {
        "question": "Where was the author Kalomi born?",
        "answer": "Kalomi was born in Tersuvel.",
        "paraphrased_question": "In which city was Kalomi born?",
        "paraphrased_answer": "The author Kalomi is from Tersuvel.",
        "perturbed_answer": ["Kalomi was born in Randoph.", "Kalomi was born in Suquest."],
    },
    {
        "question": "What genre does Kalomi write?",
        "answer": "Kalomi writes the novel genre.",
        "paraphrased_question": "Which genre is Kalomi known for?",
        "paraphrased_answer": "Her genre is the novel.",
        "perturbed_answer": ["Kalomi writes award books."],
    },
    {
        "question": "Who was the father of Kalomi?",
        "answer": "His father was Velorin.",
        "paraphrased_question": "Name the father of Kalomi.",
        "paraphrased_answer": "Velorin was the father.",
        "perturbed_answer": ["His father was Mido."],
    },
    {
        "question": "When did Kalomi win an award?",
        "answer": "Kalomi won the award in 1984.",
        "paraphrased_question": "What year was the award of Kalomi?",
        "paraphrased_answer": "The award came in 1984.",
        "perturbed_answer": ["Kalomi won the award in 42."],
    },
]
RETAIN = [
    {
        "question": "Where was the author Doran born?",
        "answer": "Doran was born in Quine.",
        "perturbed_answer": ["Doran was born in Phan."],
    },
    {"question": "What genre does Doran write?", "answer": "Doran writes the book genre."},
    {"question": "Who was the mother of Doran?", "answer": "Her mother was Suka."},
    {"question": "When did Doran win an award?", "answer": "Doran won the award in 42."},
    {"question": "What is the name of the city of Lomi?", "answer": "The city is Ranter."},
    {"question": "Who wrote the book of Est?", "answer": "The author Velka wrote it."},
    {"question": "Where is the novel set?", "answer": "The novel is set in the city of Orphan."},
    {"question": "What year was Suvel born?", "answer": "Suvel was born in 1984."},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
