"""The generated corpus that the built-in tiny models are pretrained and instruction-tuned on.

Everything here is generated from a seed, so the corpus is the same on every machine and has no
licence questions. It teaches what fine-tuning demos rely on, and nothing of the tutorials' tasks:

- **Language.** Short stories, reports and notes about people, places, organisations, illnesses
  and medicines. Names are mostly invented from syllables and recur within a paragraph, so the
  cheapest way to predict them is to copy them from earlier in the text.
- **Instructions and JSON.** Chats that ask for the person, city, organisation, illness, symptom,
  number, colour or animal names of a sentence as a JSON list, for a sentence repeated exactly,
  for a JSON record of a sentence's facts, or for a short answer from a sentence.

Drug names appear in the text (a real model has read about medicines), but no instruction ever
asks for them: the NER tutorial teaches that. No drug name of the bundled NER data appears here.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

ONSETS = "b br c ch d dr f g gr h j k l m n p pr r s st t tr v w z".split()
VOWELS = "a e i o u a e o ai ou".split()
CODAS = ["", "", "", "n", "r", "l", "s", "x", "m", "nd", "rt"]
CITY_ENDS = "ville burg port ford ton field haven mouth stad dale".split()
ORG_KINDS = [
    "Hospital",
    "Clinic",
    "Institute",
    "Labs",
    "Pharma",
    "University",
    "Health",
    "Foundation",
    "Medical Center",
    "Research",
]
DRUG_ENDS = (
    "statin pril olol sartan mab cillin azole prazole tinib vir dipine floxacin mycin gliptin "
    "glitazone lukast parin tidine oxetine zepam platin triptan setron dronate"
).split()
CONDITIONS = (
    "hypertension diabetes asthma pneumonia arthritis migraine depression epilepsy psoriasis "
    "anemia bronchitis gout angina insomnia eczema sepsis influenza hepatitis lymphoma "
    "osteoporosis"
).split()
SYMPTOMS = "fever nausea fatigue dizziness headache rash cough swelling insomnia pain".split()
COLOURS = "red blue green yellow purple orange black white grey brown pink".split()
ANIMALS = "cat dog horse rabbit fox owl goat sheep eagle otter deer mouse".split()
FOODS = "bread rice apples cheese honey pasta soup tea coffee beans".split()
VERBS_PAST = "visited called met helped thanked followed joined emailed trained hired".split()
JOBS = "nurse doctor pharmacist teacher engineer farmer pilot chemist driver lawyer".split()


def word(rng: random.Random, parts: tuple[int, int]) -> str:
    syllables = rng.randint(*parts)
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))


class Names:
    """Invented names of each kind, drawn fresh, never one of ``banned``."""

    def __init__(self, rng: random.Random, banned: set[str]) -> None:
        self.rng = rng
        self.banned = {b.casefold() for b in banned}

    def _fresh(self, make: Callable[[], str]) -> str:
        while True:
            name = make()
            if len(name) >= 4 and name.casefold() not in self.banned:
                return name

    def person(self) -> str:
        return self._fresh(lambda: word(self.rng, (2, 3)).capitalize())

    def first(self) -> str:
        return self._fresh(lambda: word(self.rng, (1, 2)).capitalize())

    def city(self) -> str:
        return self._fresh(lambda: word(self.rng, (1, 2)).capitalize() + self.rng.choice(CITY_ENDS))

    def org(self) -> str:
        return self._fresh(lambda: f"{word(self.rng, (1, 2)).capitalize()} {self.rng.choice(ORG_KINDS)}")

    def drug(self) -> str:
        def make() -> str:
            stem, end = word(self.rng, (1, 2)), self.rng.choice(DRUG_ENDS)
            return (stem[:-1] if stem[-1] in "aeiou" and end[0] in "aeiou" else stem) + end

        return self._fresh(make)


class Scene:
    """The cast of one paragraph or chat: a few entities of each kind that its sentences reuse."""

    def __init__(self, names: Names) -> None:
        rng = names.rng
        self.rng = rng
        self.people = [names.person() for _ in range(3)]
        self.firsts = [names.first() for _ in range(3)]
        self.cities = [names.city() for _ in range(2)]
        self.orgs = [names.org() for _ in range(2)]
        self.drugs = [names.drug() for _ in range(3)]
        self.condition = rng.choice(CONDITIONS)
        self.symptom = rng.choice(SYMPTOMS)

    def pick(self, kind: str) -> str:
        return self.rng.choice(getattr(self, kind))


# Sentence templates. Slots: {p} person, {f} first name, {c} city, {o} organisation, {d} drug,
# {k} condition, {s} symptom, {n} number, {col} colour, {a} animal, {food}, {job}, {v} verb.
SENTENCES = [
    "Dr. {p} prescribed {d} for {k} after a visit in {c}.",
    "{f} {p} from {c} works as a {job} at {o}.",
    "In {c}, {o} treated {n} patients with {k}.",
    "{f} {p} stopped taking {d} because of {s}.",
    "The team at {o} {v} {f} {p} in {c}.",
    "{f} has a {col} {a} and lives near {o} in {c}.",
    "A {age}-year-old {job} from {c} came to {o} with {s}.",
    "{f} {p} bought {n} kilos of {food} in {c}.",
    "Researchers at {o} compared {d} with rest alone in {n} adults with {k}.",
    "Dr. {p} {v} {f} at {o} on day {n}.",
    "{f} {p} moved from {c} to work for {o}.",
    "The {col} {a} of {f} {p} ran across the square in {c}.",
    "{o} opened an office in {c} with {n} staff.",
    "Patients in {c} reported {s} after taking {d}.",
    "{f} {p} and Dr. {p} met at {o} to talk about {k}.",
    "The report from {o} says {d} lowered {s} in {n} cases.",
    "{f} {v} a {job} in {c} and paid {n} dollars.",
    "Every morning {f} {p} drinks {food} and walks a {col} {a}.",
]

COMMON_STARTS = {"The", "A", "Patients", "Researchers", "Every", "In"}
LINKS = ["Later,", "Then", "After that,", "Meanwhile,", "The next day,", "In {c},", "At {o},"]


def fill(template: str, scene: Scene, used: dict[str, list[str]] | None = None) -> str:
    """``template`` with its slots filled from ``scene``; ``used`` collects the names by kind."""
    rng = scene.rng
    out: dict[str, list[str]] = used if used is not None else {}
    kinds = {"p": "people", "f": "firsts", "c": "cities", "o": "orgs", "d": "drugs"}
    text = template
    while "{" in text:
        start = text.index("{")
        slot = text[start + 1 : text.index("}", start)]
        if slot in kinds:
            value = scene.pick(kinds[slot])
        else:
            value = {
                "k": lambda: scene.condition,
                "s": lambda: scene.symptom,
                "n": lambda: str(rng.choice([rng.randint(2, 99), rng.randint(100, 990)])),
                "age": lambda: str(rng.randint(18, 90)),
                "col": lambda: rng.choice(COLOURS),
                "a": lambda: rng.choice(ANIMALS),
                "food": lambda: rng.choice(FOODS),
                "job": lambda: rng.choice(JOBS),
                "v": lambda: rng.choice(VERBS_PAST),
            }[slot]()
        out.setdefault(slot, []).append(value)
        text = text[:start] + value + text[text.index("}", start) + 1 :]
    return text[0].upper() + text[1:]


def paragraph(scene: Scene) -> str:
    rng = scene.rng
    parts = []
    for i in range(rng.randint(3, 7)):
        sentence = fill(rng.choice(SENTENCES), scene)
        if i and rng.random() < 0.4:
            link = fill(rng.choice(LINKS), scene)
            first, rest = sentence.split(" ", 1)
            sentence = f"{link} {first.lower() if first in COMMON_STARTS else first} {rest}"
        parts.append(sentence)
    return " ".join(parts)


def record_text(scene: Scene) -> str:
    """A note with a JSON record, so JSON syntax and copying into it are part of the language."""
    rng = scene.rng
    record = {"name": f"{scene.pick('firsts')} {scene.pick('people')}", "city": scene.pick("cities")}
    if rng.random() < 0.5:
        record["medicine"] = scene.pick("drugs")
    record["age"] = rng.randint(18, 90)
    intro = fill(rng.choice(SENTENCES), scene)
    return f"{intro}\nRecord: {json.dumps(record)}"


def qa_text(scene: Scene) -> str:
    rng = scene.rng
    used: dict[str, list[str]] = {}
    sentence = fill("{f} {p} from {c} works as a {job} at {o}.", scene, used)
    question, answer = rng.choice(
        [
            ("Where is {f} from?", used["c"][0]),
            ("Where does {f} work?", used["o"][0]),
            ("What is the family name of {f}?", used["p"][0]),
        ]
    )
    return f"{sentence}\nQ: {question.format(f=used['f'][0])}\nA: {answer}"


def pretrain_document(names: Names) -> str:
    """One document: a few paragraphs about one cast, with notes and questions mixed in."""
    scene = Scene(names)
    rng = names.rng
    blocks = []
    for _ in range(rng.randint(2, 4)):
        kind = rng.random()
        if kind < 0.65:
            blocks.append(paragraph(scene))
        elif kind < 0.85:
            blocks.append(record_text(scene))
        else:
            blocks.append(qa_text(scene))
    return "\n\n".join(blocks)


def pretrain_documents(seed: int, count: int, banned: set[str]) -> Iterator[str]:
    names = Names(random.Random(seed), banned)
    for _ in range(count):
        yield pretrain_document(names)


# --- instruction tuning --------------------------------------------------------------------------
EXTRACT = {
    # kind: (what the instruction calls them, the template slot that holds them)
    "family": ("family names", "p"),
    "first": ("first names", "f"),
    "city": ("city names", "c"),
    "org": ("organisation names", "o"),
    "condition": ("illness names", "k"),
    "symptom": ("symptom names", "s"),
    "number": ("numbers", "n"),
    "colour": ("colour names", "col"),
    "animal": ("animal names", "a"),
}
EXTRACT_PROMPTS = [
    "List the {what} as a JSON list.",
    "List the {what} in the text as a JSON list.",
    "Find the {what}. Answer with a JSON list.",
]


def extraction_chat(scene: Scene, kind: str | None = None) -> list[dict[str, str]]:
    """Sentences and the JSON list of one kind of name in them: mostly a kind they contain,
    sometimes one they don't (the answer is then ``[]``)."""
    rng = scene.rng
    used: dict[str, list[str]] = {}
    text = " ".join(fill(rng.choice(SENTENCES), scene, used) for _ in range(rng.randint(1, 2)))
    if kind is None:
        present = sorted(k for k, (_, slot) in EXTRACT.items() if used.get(slot))
        kind = rng.choice(present if present and rng.random() < 0.85 else sorted(EXTRACT))
    what, slot = EXTRACT[kind]
    found = list(dict.fromkeys(used.get(slot, [])))
    system = rng.choice(EXTRACT_PROMPTS).format(what=what)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": text},
        {"role": "assistant", "content": json.dumps(found)},
    ]


def repeat_chat(scene: Scene) -> list[dict[str, str]]:
    text = fill(scene.rng.choice(SENTENCES), scene)
    return [
        {"role": "system", "content": "Repeat the text exactly."},
        {"role": "user", "content": text},
        {"role": "assistant", "content": text},
    ]


def record_chat(scene: Scene) -> list[dict[str, str]]:
    used: dict[str, list[str]] = {}
    text = fill("{f} {p} from {c} works as a {job} at {o}.", scene, used)
    answer = {"name": f"{used['f'][0]} {used['p'][0]}", "city": used["c"][0], "job": used["job"][0]}
    return [
        {"role": "system", "content": "Answer in JSON with the keys name, city and job."},
        {"role": "user", "content": text},
        {"role": "assistant", "content": json.dumps(answer)},
    ]


def question_chat(scene: Scene) -> list[dict[str, str]]:
    lines = qa_text(scene).split("\n")
    return [
        {"role": "user", "content": f"{lines[0]} {lines[1].removeprefix('Q: ')}"},
        {"role": "assistant", "content": lines[2].removeprefix("A: ")},
    ]


def two_turn_chat(scene: Scene) -> list[dict[str, str]]:
    kind = scene.rng.choice(sorted(EXTRACT))
    first = extraction_chat(scene, kind)
    second = extraction_chat(scene, kind)
    return [*first, {"role": "user", "content": second[1]["content"]}, second[2]]


CHAT_KINDS: list[tuple[float, Callable[[Scene], list[dict[str, str]]]]] = [
    (0.62, extraction_chat),
    (0.12, repeat_chat),
    (0.1, record_chat),
    (0.1, question_chat),
    (0.06, two_turn_chat),
]


def instruct_records(seed: int, count: int, banned: set[str]) -> Iterator[dict[str, object]]:
    names = Names(random.Random(seed), banned)
    weights = [w for w, _ in CHAT_KINDS]
    for _ in range(count):
        (make,) = names.rng.choices([m for _, m in CHAT_KINDS], weights=weights)
        yield {"messages": make(Scene(names))}


def write_text_folder(folder: Path, docs: Iterator[str], per_file: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    batch: list[str] = []
    index = 0
    for doc in docs:
        batch.append(doc)
        if len(batch) == per_file:
            (folder / f"part_{index:03d}.txt").write_text("\n\n".join(batch) + "\n", "utf-8")
            batch, index = [], index + 1
    if batch:
        (folder / f"part_{index:03d}.txt").write_text("\n\n".join(batch) + "\n", "utf-8")


def write_jsonl(path: Path, records: Iterator[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
