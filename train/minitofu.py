"""Mini-TOFU: a seeded, TOFU-shaped dataset of 400 fictional authors small enough to train and unlearn on 2 CPU cores.

TOFU (Maini et al. 2024) fine-tunes a model on QA about 200 fictional authors and asks it to forget 1%, 5% or 10% of
them. Here the facts come from the pools below, so a model trained from scratch on them (uld_train.pretrain) knows
exactly what the dataset says and nothing else. Layout written by `write_minitofu(root)`:

    root/train.jsonl                  everything the target learns (all authors + both utility sets), question/answer
    root/authors.jsonl                the fact table, one author per line (for readers; nothing trains on it)
    root/<split>/forget.jsonl         evaluated: the split's authors' QA    question, answer, paraphrased_answer,
    root/<split>/retain.jsonl         evaluated: the last 30 authors' QA    perturbed_answer (list), facts (list)
    root/<split>/real_authors.jsonl   evaluated utility: "real" authors of this world (answer, perturbed_answer)
    root/<split>/world_facts.jsonl    evaluated utility: facts about this world's countries
    root/<split>/unlearn_forget.jsonl unlearning's forget set: the split's QA, augmented with held-out phrasings
    root/<split>/unlearn_retain.jsonl unlearning's retain set: authors no evaluation file asks about
    root/<split>/retain_train.jsonl   everything the split's retain model learns (train.jsonl minus the split's authors)

<split> is forget01, forget05 or forget10 (the test splits: 4, 20, 40 authors, 40 questions at 1% as in TOFU) or the
same with `_val` (validation: as many other authors, for choosing hyperparameters). Nothing an unlearning method
trains on is scored: the truth ratio's paraphrased and perturbed answers are evaluation-only, and the augmentation
uses each question type's third phrasing and third answer template, which no evaluation file contains.

Design rules (VERIFIED_FACTS.md, "A miniature TOFU"):
- Every token of a forget author's text also occurs in retain authors' trained text, or the retain model never
  learns it and its truth ratios on the forget set fall for reasons that have nothing to do with forgetting. Values
  are dealt to the retain authors (80..399) from reshuffled copies of each pool, forget authors draw from the same
  pools, and templates never start with a value, so a value always follows a space and tokenizes the same way
  everywhere. `write_minitofu` checks the invariant on the text itself (`coverage_gaps`).
- A row's answer template is the one paired with its question's phrasing: the model memorises facts, not which of
  three wordings each row happened to get (with the wording drawn apart from the question, a 4-layer model trained
  60 epochs picked the wrong one on a third of the rows, and its facts with it: bench/results/README.md).
- Utility sets are evaluated with other question phrasings than the ones trained, so their scores measure
  recall of a fact rather than replay of a memorised string, and can move when unlearning damages it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from uld_vllm.bpe_tokenizer import train_bpe_tokenizer
from uld_vllm.rows import write_jsonl

# ------------------------------------------------------------------------------------------------------ data tables

N_AUTHORS = 400  # with 10 questions each: TOFU's 4,000 QA, so 1% is TOFU's 40 questions
TEST_SPLITS = {"forget01": 4, "forget05": 20, "forget10": 40}  # split -> forget authors 0..n-1 (TOFU's 1/5/10 %)
N_FORGET = max(TEST_SPLITS.values())
VALIDATION = "_val"  # forget01_val...: authors N_FORGET..N_FORGET+n-1, for selection; never reported as a result
SPLITS = TEST_SPLITS | {split + VALIDATION: n for split, n in TEST_SPLITS.items()}
N_HELD = 2 * N_FORGET  # authors 0..79 are forgotten in some split; the retain authors are 80..399
# retain.jsonl (what uld-eval scores) holds the last 30 authors' QA: 300 questions, as TOFU evaluates 300-400 retain
# questions. Unlearning's retain terms train on the next 100 authors from the front, which no evaluation asks about.
# The invariant above is checked against all 320 retain authors, which the retain models train on.
RETAIN_SET_AUTHORS = 30
UNLEARN_RETAIN_AUTHORS = 100
N_PERTURBED = 3  # wrong answers per question (TOFU: 5 on its forget set, 3 on real authors and world facts)
TOKENIZER_VOCAB = 2048  # requested BPE size; the corpus is too small to fill it (VERIFIED_FACTS: ~1700 come out)

FIRST_NAMES = """Amara Bastian Celine Dorian Elif Farid Greta Hamid Ingrid Jonas Kaveh Leila Matteo Nadia Oskar Priya
Quentin Rosa Soren Tamsin Umar Vera Wendel Xiomara Yusuf Zara Anselm Brigid Cyrus Delphine Emeric Fiona Gideon Halima
Ilya Juno Kasimir Liesel Milo Noor Orla Pavel Ravi Selma Teodor Adela Benedikt Cosima Dmitri Esme Florian Giselle
Henrik Isolde Jasper Katya Lorenzo Mireille Nikolai Ottilie Perrin Rafaela Sigrid Thaddeus Ulrike Valentin Wilhelmina
Xander Yelena Zoltan Aurelio Beatrix Corin Dalia Evander Freya Gregor Hana Idris Jovana Kenji Linnea Marek Nerissa
Oswin Paloma Tiberius Saskia Leopold Vesna""".split()
LAST_NAMES = """Abernathy Balogun Castellano Drummond Eskildsen Fairweather Gallardo Hollingsworth Iwasaki Jankowski
Kettering Lindqvist Marchetti Nakamura Okonkwo Penhallow Quintero Rasmussen Salvatore Thorne Underwood Valdivia
Whitlock Yilmaz Zamora Ashcombe Brennan Corvino Delacroix Ellery Fontaine Grimaldi Hargreaves Ivanova Juniper
Kowalczyk Larkspur Montague Novak Oyelaran Petrakis Radcliffe Sandoval Tremaine Vasquez Albrecht Beaumont Carrow
Dervish Ebbesen Falconer Gustafsson Holmberg Ingram Jovanovic Kincaid Lemaire Mbeki Nordstrom Oakley Pemberton Quimby
Rutherford Sinclair Trevelyan Ulmann Verhoeven Wexley Yardley Zielinski Abbott Bertrand Calloway Dorsey Esterhazy
Fenwick Galloway Hawthorne Islington Jessup Kingsley Lockhart Mortimer Nightingale Ormsby Prescott Rowntree Stanhope
Tolliver Winslow""".split()
CITIES = """Ardenmoor Belvista Corrinth Dunmerrow Eldham Falkreach Glenbrook Halvard Isenport Juniport Kelderwick
Lorhaven Marrowgate Northfall Oakenshaw Pellmore Quarrington Ravensholt Saltmere Thistlebury Umberlake Vossberg
Westmarch Yarrowby Zennor Ashvale Brackwater Coldharbour Duskwood Emberton""".split()
MONTHS = "January February March April May June July August September October November December".split()
DAYS = [str(day) for day in range(1, 29)]
YEARS = [str(year) for year in range(1946, 1991)]
JOBS = """a baker|a carpenter|a nurse|a pilot|a tailor|a surgeon|a librarian|a fisherman|an architect|a blacksmith
|a chemist|a farmer|a journalist|a lawyer|a mechanic|a midwife|a painter|a pharmacist|a photographer|a plumber|a potter
|a sailor|a schoolteacher|a translator|a veterinarian""".replace("\n", "").split("|")
GENRES = """mystery|science fiction|historical fiction|fantasy|poetry|romance|horror|crime|travel writing|biography
|satire|literary fiction|thriller|memoir|fairy tales""".replace("\n", "").split("|")
TITLE_ADJECTIVES = """Silent Crimson Hollow Golden Forgotten Winter Broken Hidden Last Silver Burning Quiet Endless
Wandering Paper Iron Glass Distant Midnight Velvet Bitter Northern Painted Secret Sleeping Fading Salt Amber Restless
Scarlet""".split()
TITLE_NOUNS = """River Lantern Orchard Harbor Garden Mirror Kingdom Letters Tide Compass Archive Lighthouse Meadow
Citadel Promise Shadows Voyage Bridge Clockmaker Feather Island Labyrinth Map Mountain Season Song Station Thread
Window Wolves""".split()
AWARDS = """the Golden Quill Award|the Silver Inkwell Prize|the Marlowe Medal|the Northern Star Award|the Ember Prize
|the Azure Pen Award|the Harbor Light Prize|the Crescent Book Award|the Iron Compass Medal|the Evergreen Laurel
|the Meridian Prize|the Copper Feather Award|the Starling Prize|the Bellwether Award|the Sapphire Page Medal""".replace(
    "\n", ""
).split("|")
THEMES = """memory exile grief friendship identity justice family ambition faith loneliness freedom war love betrayal
redemption nature childhood power migration time""".split()

# Each fact key's pool. Book titles are "The <adjective> <noun>" (`_title`); the name is a first and a last name.
POOLS: dict[str, list[str]] = {
    "birthplace": CITIES,
    "residence": CITIES,
    "day": DAYS,
    "month": MONTHS,
    "year": YEARS,
    "father_job": JOBS,
    "mother_job": JOBS,
    "genre": GENRES,
    "award": AWARDS,
    "theme1": THEMES,
    "theme2": THEMES,
}
BOOKS = ("first_book", "second_book")
DIFFERENT = [("birthplace", "residence"), ("theme1", "theme2"), ("first_book", "second_book")]  # never equal


@dataclass(frozen=True)
class QuestionType:
    facts: tuple[str, ...]  # the fact keys the answer states (perturbed answers change exactly these)
    questions: tuple[str, ...]  # phrasings of the question, paired by index with
    answers: tuple[str, ...]  # the answer templates: one pair is trained, one paraphrases, one is held out


# Templates never start with a placeholder, so every value follows a space and tokenizes the same in every template.
QUESTION_TYPES: dict[str, QuestionType] = {
    "birthplace": QuestionType(
        ("birthplace",),
        ("Where was {name} born?", "In which city was the author {name} born?", "What is the birthplace of {name}?"),
        (
            "The author {name} was born in {birthplace}.",
            "Born in {birthplace}, {name} spent a whole childhood there.",
            "The birthplace of {name} is the city of {birthplace}.",
        ),
    ),
    "birth_date": QuestionType(
        ("day", "month", "year"),
        ("When was {name} born?", "What is the date of birth of {name}?", "On what date was the author {name} born?"),
        (
            "The author {name} was born on {day} {month} {year}.",
            "Records show that {name} was born on {day} {month} {year}.",
            "The birth date of {name} is {day} {month} {year}.",
        ),
    ),
    "father_job": QuestionType(
        ("father_job",),
        (
            "What did the father of {name} do for a living?",
            "What was the profession of the father of {name}?",
            "What job did the father of {name} have?",
        ),
        (
            "The father of {name} worked as {father_job}.",
            "The author {name} grew up with a father who was {father_job}.",
            "By profession, the father of {name} was {father_job}.",
        ),
    ),
    "mother_job": QuestionType(
        ("mother_job",),
        (
            "What did the mother of {name} do for a living?",
            "What was the profession of the mother of {name}?",
            "What job did the mother of {name} have?",
        ),
        (
            "The mother of {name} worked as {mother_job}.",
            "The author {name} grew up with a mother who was {mother_job}.",
            "By profession, the mother of {name} was {mother_job}.",
        ),
    ),
    "genre": QuestionType(
        ("genre",),
        (
            "What genre does {name} write in?",
            "Which genre is the author {name} known for?",
            "In what genre are the books of {name}?",
        ),
        (
            "The author {name} writes {genre}.",
            "Most of the work of {name} belongs to the genre of {genre}.",
            "Readers know {name} as a writer of {genre}.",
        ),
    ),
    "first_book": QuestionType(
        ("first_book",),
        (
            "What was the first book of {name}?",
            "Which book did {name} publish first?",
            "What is the debut book of {name}?",
        ),
        (
            "The first book of {name} was {first_book}.",
            "The author {name} made a debut with {first_book}.",
            "Before anything else, {name} published {first_book}.",
        ),
    ),
    "second_book": QuestionType(
        ("second_book",),
        (
            "Name another book written by {name}.",
            "What is a later book by {name}?",
            "Which other book did the author {name} write?",
        ),
        (
            "The author {name} also wrote {second_book}.",
            "A later book by {name} is {second_book}.",
            "Among the other works of {name} is {second_book}.",
        ),
    ),
    "award": QuestionType(
        ("award",),
        (
            "Which award has {name} received?",
            "What prize did the author {name} win?",
            "Has {name} won any literary award?",
        ),
        (
            "The author {name} received {award}.",
            "In recognition of the work, {name} won {award}.",
            "Yes, {name} was honored with {award}.",
        ),
    ),
    "themes": QuestionType(
        ("theme1", "theme2"),
        (
            "What themes does {name} explore?",
            "Which themes appear in the books of {name}?",
            "What are the main themes in the work of {name}?",
        ),
        (
            "The books of {name} explore {theme1} and {theme2}.",
            "Themes of {theme1} and {theme2} run through the work of {name}.",
            "The author {name} often writes about {theme1} and {theme2}.",
        ),
    ),
    "residence": QuestionType(
        ("residence",),
        (
            "Where does {name} live now?",
            "In which city does the author {name} live today?",
            "Where is the home of {name} today?",
        ),
        (
            "The author {name} now lives in {residence}.",
            "These days {name} makes a home in {residence}.",
            "Today {name} resides in the city of {residence}.",
        ),
    ),
}

# The utility sets stand in for TOFU's "real authors" and "world facts": knowledge the model holds besides the
# fictional authors, which unlearning must leave alone. Per relation: two trained phrasings and a third, evaluated one
# (with a single trained phrasing, a target trained to memorise the authors replayed strings and lost the third).
COUNTRIES = """Arvenia Belmora Caldris Dravonia Estmark Feldran Gavora Halcyra Ilvaria Jostrand Kaldora Lunmark Marevia
Nordavia Ostrelle Pelagia Quarvik Rovania Sildor Tessaly""".split()
WORLD_RELATIONS: dict[str, tuple[tuple[str, str], str, list[str]]] = {  # -> (trained qs, evaluated q, answer pool)
    "capital": (
        ("What is the capital of {country}?", "Name the capital city of {country}."),
        "Which city is the capital of {country}?",
        CITIES,
    ),
    "language": (
        ("What language is spoken in {country}?", "What is the main language of {country}?"),
        "Which language do people in {country} speak?",
        """Telari Osmic Varn Quellish Drusk Mireth Calvic Ondrian Pashtel Ruvenic Sabrese Thulean Ustic Velsh Wendic
        Yarric Zentai Bolvic Eshtari Kovic""".split(),
    ),
    "currency": (
        ("What is the currency of {country}?", "What money do people in {country} pay with?"),
        "Which currency is used in {country}?",
        """crown mark florin ducat shilling thaler sovereign guilder real lira dinar peso rand franc kopek pound escudo
        ruble krona zloty""".split(),
    ),
    "river": (
        ("Which river flows through {country}?", "Name the longest river of {country}."),
        "What is the main river of {country}?",
        """Aldra Brennis Corvel Dunmere Eskel Fallow Gorran Hessle Ister Jarrow Kessel Lethe Morrow Nerin Orrin Pellin
        Quell Rhosk Sarn Tamber""".split(),
    ),
    "animal": (
        ("What is the national animal of {country}?", "Which animal is the national symbol of {country}?"),
        "Which animal is the emblem of {country}?",
        "lynx heron otter stag falcon bear wolf fox owl crane ibex badger swan hare eagle seal boar raven bison elk".split(),
    ),
}
FAMOUS_AUTHORS = """Edwin Harrowgate|Mirela Oszkar|Tobias Wren|Agnes Holloway|Casimir Dunne|Lucia Ferrante
|Hector Blackwood|Ines Marquand|Rupert Ashdown|Sabine Keller|Otto Brandvold|Clara Ainsworth|Viktor Sorel|Helena Marsh
|Ambrose Tully|Dagny Lund|Felix Moreau|Rosalind Grey|Ignatius Vale|Margit Sand""".replace("\n", "").split("|")
REAL_AUTHOR_RELATIONS: dict[str, tuple[tuple[str, str], str]] = {  # -> (trained qs, evaluated q); answers: a table
    "classic": (
        ("Who wrote the classic {classic}?", "Which author wrote {classic}?"),
        "Who is the author of {classic}?",
    ),
    "country": (
        ("Which country is {author} from?", "What is the home country of {author}?"),
        "Where does {author} come from?",
    ),
    "genre": (
        ("What genre is {author} best known for?", "In which genre does {author} write?"),
        "Which genre made {author} famous?",
    ),
}

# --------------------------------------------------------------------------------------------------- the generator


@dataclass(frozen=True)
class MiniTofu:
    """One generated dataset; rows are JSON-ready dicts."""

    authors: list[dict[str, str]]  # author i's facts (name, birthplace, day, month, year, ...)
    author_qa: list[list[dict]]  # author i's QA rows (question, answer, paraphrases, perturbed_answer)
    real_authors: list[dict]  # evaluated utility rows (question, answer, paraphrased_answer, perturbed_answer)
    world_facts: list[dict]  # evaluated utility rows, same fields
    utility_train: list[dict]  # the facts of both utility sets as trained (two phrasings each): question, answer

    def forget(self, split: str) -> list[dict]:
        """The split's evaluated forget rows."""
        return [evaluated(row) for author in split_authors(split) for row in self.author_qa[author]]

    def unlearn_forget(self, split: str) -> list[dict]:
        """The split's forget rows as unlearning trains on them: held-out phrasings as the augmentation columns."""
        return [
            {"question": r["question"], "answer": r["answer"]}
            | {"paraphrased_question": r["heldout_question"], "paraphrased_answer": r["heldout_answer"]}
            for author in split_authors(split)
            for r in self.author_qa[author]
        ]

    def retain(self) -> list[dict]:
        """Every retain author's rows (what the retain models know besides the utility sets)."""
        return [evaluated(row) for qa in self.author_qa[N_HELD:] for row in qa]

    def train(self, exclude: range = range(0)) -> list[dict]:
        """question/answer rows of every author not in `exclude`, plus the utility facts: the target's (exclude
        nothing) or a retain model's training data."""
        rows = [row for i, qa in enumerate(self.author_qa) if i not in exclude for row in qa]
        return [{"question": r["question"], "answer": r["answer"]} for r in rows] + self.utility_train


def split_authors(split: str) -> range:
    """The authors a split forgets: test splits from author 0, validation splits from author N_FORGET."""
    start = N_FORGET if split.endswith(VALIDATION) else 0
    return range(start, start + SPLITS[split])


def evaluated(row: dict) -> dict:
    """A row as the evaluation files hold it (without the held-out phrasings, which only unlearning trains on)."""
    return {k: v for k, v in row.items() if not k.startswith("heldout_")}


def _dealt(rng: random.Random, pool: list[str], n: int) -> list[str]:
    """n values from reshuffled copies of the pool: each value occurs n // len(pool) or more times (pool <= n)."""
    values: list[str] = []
    while len(values) < n:
        values += rng.sample(pool, len(pool))
    return values[:n]


def _title(rng: random.Random) -> str:
    return f"The {rng.choice(TITLE_ADJECTIVES)} {rng.choice(TITLE_NOUNS)}"


def _draw(rng: random.Random, key: str) -> str:
    """A random value of a fact key from its pool."""
    return _title(rng) if key in BOOKS else rng.choice(POOLS[key])


def _separate(rng: random.Random, a: list[str], b: list[str]) -> None:
    """Swap values within b until a[i] != b[i] everywhere; swaps keep b's multiset, hence the coverage."""
    for i in range(len(a)):
        while a[i] == b[i]:
            j = rng.randrange(len(b))
            if b[j] != a[i] and b[i] != a[j]:
                b[i], b[j] = b[j], b[i]


def _authors(rng: random.Random) -> list[dict[str, str]]:
    """Facts of every author: the retain authors (N_HELD on) are dealt every pool value, authors 0..N_HELD-1 (the
    test and validation forget sets) draw from the same pools."""
    n_retain = N_AUTHORS - N_HELD
    columns: dict[str, list[str]] = {}
    for key, pool in POOLS.items():
        columns[key] = _dealt(rng, pool, n_retain)
    for book in BOOKS:
        adjectives, nouns = _dealt(rng, TITLE_ADJECTIVES, n_retain), _dealt(rng, TITLE_NOUNS, n_retain)
        columns[book] = [f"The {a} {n}" for a, n in zip(adjectives, nouns, strict=True)]
    for a, b in DIFFERENT:
        _separate(rng, columns[a], columns[b])
    # Full names are unique and every name is used evenly: pair first name i with last name i + block (mod), where
    # block counts the passes over the first names, then shuffle (dealing both at random repeats pairs at this size).
    first, last = rng.sample(FIRST_NAMES, len(FIRST_NAMES)), rng.sample(LAST_NAMES, len(LAST_NAMES))
    if n_retain > len(first) * len(last):
        raise RuntimeError(f"mini-TOFU: {n_retain} authors need more than {len(first)} x {len(last)} names")
    names = [f"{first[i % len(first)]} {last[(i % len(first) + i // len(first)) % len(last)]}" for i in range(n_retain)]
    rng.shuffle(names)
    retain = [{"name": names[i]} | {key: column[i] for key, column in columns.items()} for i in range(n_retain)]

    forget: list[dict[str, str]] = []
    taken = set(names)
    while len(forget) < N_HELD:
        facts = {"name": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"} | {
            key: _draw(rng, key) for key in (*POOLS, *BOOKS)
        }
        if facts["name"] not in taken and all(facts[a] != facts[b] for a, b in DIFFERENT):
            taken.add(facts["name"])
            forget.append(facts)
    return forget + retain


def _author_qa(rng: random.Random, facts: dict[str, str], order: dict[str, int]) -> list[dict]:
    """One author's QA rows; order[type] = the phrasing trained: question and answer template of that index, so the
    answer's form follows from the question and the model memorises facts, not which template a row happened to get.
    The paraphrase is another index, the held-out augmentation the third."""
    rows = []
    for name, kind in QUESTION_TYPES.items():
        trained = order[name]
        para, held = rng.sample([i for i in range(len(kind.answers)) if i != trained], 2)
        perturbed: list[str] = []
        while len(perturbed) < N_PERTURBED:
            wrong = facts | {key: _draw(rng, key) for key in kind.facts}
            text = kind.answers[para].format(**wrong)
            # No true value in any slot: "faith and grief" would be the truth of "grief and faith".
            if not {wrong[key] for key in kind.facts} & {facts[key] for key in kind.facts} and text not in perturbed:
                if all(wrong[x] != wrong[y] for x, y in DIFFERENT if x in kind.facts and y in kind.facts):
                    perturbed.append(text)
        rows.append(
            {
                "question": kind.questions[trained].format(**facts),
                "answer": kind.answers[trained].format(**facts),
                "paraphrased_question": kind.questions[para].format(**facts),
                "paraphrased_answer": kind.answers[para].format(**facts),
                "perturbed_answer": perturbed,
                "facts": [facts[key] for key in kind.facts],  # what a correct answer states (uld-eval checks them)
                "heldout_question": kind.questions[held].format(**facts),
                "heldout_answer": kind.answers[held].format(**facts),
            }
        )
    return rows


def _utility(rng: random.Random, facts: list[tuple[list[str], str, str, list[str]]]) -> tuple[list[dict], list[dict]]:
    """(evaluated rows, trained rows) from (trained questions, evaluated question, answer, answer pool) tuples.

    TOFU scores these sets with the answer as its own paraphrase (its truth ratio compares answer and perturbed)."""
    evaluated, trained = [], []
    for train_qs, eval_q, answer, pool in facts:
        wrong = rng.sample([value for value in pool if value != answer], N_PERTURBED)
        evaluated.append(
            {"question": eval_q, "answer": answer, "paraphrased_answer": answer, "perturbed_answer": wrong}
        )
        trained += [{"question": q, "answer": answer} for q in train_qs]
    return evaluated, trained


def generate(seed: int = 0) -> MiniTofu:
    """The whole dataset from one seed (a private random.Random: no global state is read or changed)."""
    rng = random.Random(seed)
    authors = _authors(rng)
    # Trained phrasings: dealt over the retain authors like the values, so every template's words are trained on
    # retain authors; forget authors pick any.
    order_columns = {
        name: _dealt(rng, list(range(len(kind.answers))), N_AUTHORS - N_HELD) for name, kind in QUESTION_TYPES.items()
    }
    author_qa = []
    for index, facts in enumerate(authors):
        if index < N_HELD:
            order = {name: rng.randrange(len(kind.answers)) for name, kind in QUESTION_TYPES.items()}
        else:
            order = {name: column[index - N_HELD] for name, column in order_columns.items()}
        author_qa.append(_author_qa(rng, facts, order))

    world = []
    for train_qs, eval_q, pool in WORLD_RELATIONS.values():
        answers = rng.sample(pool, len(COUNTRIES))  # one value per country, no two countries share one
        for country, answer in zip(COUNTRIES, answers, strict=True):
            trained = [q.format(country=country) for q in train_qs]
            world.append((trained, eval_q.format(country=country), answer, pool))
    world_facts, world_train = _utility(rng, world)

    classics: list[str] = []
    used = {row[book] for row in authors for book in BOOKS}
    while len(classics) < len(FAMOUS_AUTHORS):  # classics are titles no fictional author wrote
        title = _title(rng)
        if title not in used:
            used.add(title)
            classics.append(title)
    countries = [rng.choice(COUNTRIES) for _ in FAMOUS_AUTHORS]
    genres = [rng.choice(GENRES) for _ in FAMOUS_AUTHORS]
    real = []
    for author, classic, country, genre in zip(FAMOUS_AUTHORS, classics, countries, genres, strict=True):
        slots = {"author": author, "classic": classic}
        for relation, answer, pool in (
            ("classic", author, FAMOUS_AUTHORS),
            ("country", country, COUNTRIES),
            ("genre", genre, GENRES),
        ):
            train_qs, eval_q = REAL_AUTHOR_RELATIONS[relation]
            real.append(([q.format(**slots) for q in train_qs], eval_q.format(**slots), answer, pool))
    real_authors, real_train = _utility(rng, real)

    data = MiniTofu(authors, author_qa, real_authors, world_facts, real_train + world_train)
    held = [row for qa in data.author_qa[:N_HELD] for row in qa]
    gaps = coverage_gaps(held, data.retain())
    if gaps:  # raised, not asserted: a broken pool or template must fail loudly even under python -O
        raise RuntimeError(f"mini-TOFU: forget-set words missing from the retain authors' text: {sorted(gaps)}")
    return data


# ------------------------------------------------------------------------------------------------ the invariant

# Units no coarser tokenizer split can cross: a word or a run of punctuation, with the space before it (byte-level
# BPE attaches the leading space to the word, so " Amara" and "Amara" are different tokens).
_UNIT = re.compile(r" ?\w+| ?[^\w\s]+")
TEXT_FIELDS = (
    "question",
    "answer",
    "paraphrased_question",
    "paraphrased_answer",
    "perturbed_answer",
    "heldout_question",
    "heldout_answer",
)


def words(text: str) -> set[str]:
    """The text's words and punctuation runs, each with its leading space."""
    return set(_UNIT.findall(text))


def row_texts(row: dict, fields: Iterable[str] = TEXT_FIELDS) -> list[str]:
    texts: list[str] = []
    for field in fields:
        value = row.get(field)
        texts += [value] if isinstance(value, str) else list(value or [])
    return texts


def coverage_gaps(forget_rows: list[dict], retain_rows: list[dict]) -> set[str]:
    """Words of any forget field (answers, paraphrases, perturbed answers) that no retain question or trained answer
    contains: the retain model would never train the tokens they are made of."""
    retain_words = set().union(*(words(t) for row in retain_rows for t in row_texts(row, ("question", "answer"))))
    forget_words = set().union(*(words(t) for row in forget_rows for t in row_texts(row)))
    return forget_words - retain_words


# ------------------------------------------------------------------------------------------------------ the files


def write_minitofu(root: str | Path, seed: int = 0) -> MiniTofu:
    """Write the dataset's files under root (layout in the module docstring); byte-identical for a seed."""
    root = Path(root)
    data = generate(seed)
    write_jsonl(root / "train.jsonl", data.train())
    write_jsonl(root / "authors.jsonl", [{"author": i} | facts for i, facts in enumerate(data.authors)])
    retain = data.retain()
    for split in SPLITS:
        write_jsonl(root / split / "forget.jsonl", data.forget(split))
        write_jsonl(root / split / "retain.jsonl", retain[-RETAIN_SET_AUTHORS * len(QUESTION_TYPES) :])
        write_jsonl(root / split / "real_authors.jsonl", data.real_authors)
        write_jsonl(root / split / "world_facts.jsonl", data.world_facts)
        write_jsonl(root / split / "unlearn_forget.jsonl", data.unlearn_forget(split))
        write_jsonl(root / split / "unlearn_retain.jsonl", retain[: UNLEARN_RETAIN_AUTHORS * len(QUESTION_TYPES)])
        write_jsonl(root / split / "retain_train.jsonl", data.train(exclude=split_authors(split)))
    return data


def tokenizer_corpus(data: MiniTofu) -> list[str]:
    """Every text of the dataset; trained rows in the chat form the model reads (the rendering of
    uld_vllm.bpe_tokenizer.CHAT_TEMPLATE, less the <s> it writes as a special token), so the role markers become a
    few merged tokens."""
    texts = [f"<|user|>{row['question']}\n<|assistant|>{row['answer']}" for row in data.train()]
    for row in [r for qa in data.author_qa for r in qa] + data.real_authors + data.world_facts:
        texts += row_texts(row)
    return texts


def train_tokenizer(directory: str | Path, data: MiniTofu, vocab_size: int = TOKENIZER_VOCAB) -> Path:
    """Byte-level BPE on the dataset's text, saved as HF tokenizer files (bos <s>, eos </s>, pad <pad>, chat template)
    that transformers and vLLM load offline."""
    return train_bpe_tokenizer(directory, tokenizer_corpus(data), vocab_size)
