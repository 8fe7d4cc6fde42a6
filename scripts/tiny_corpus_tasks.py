"""The generated pretraining and instruction data of the built-in tiny models.

``scripts/pretrain_tiny.py`` trains the tiny models on it. Everything is generated from a seed, so
it is reproducible and has no licence questions. It teaches what fine-tuning demos rely on:

- **language**: short English sentences about everyday scenes;
- **copying names from the context**: sentences that name invented things (minerals, plants,
  towns, stars, companies, people), and answers that list the ones of one kind, spelled exactly;
- **following a short instruction** and **answering in JSON**: lists, records and counts.

It never contains a drug name or a drug-extraction task, so the drug-name tutorial measures what
fine-tuning adds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

ONSETS = [
    "b",
    "br",
    "c",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "st",
    "t",
    "th",
    "tr",
    "v",
    "w",
    "z",
]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o"]
CODAS = ["", "", "", "n", "r", "l", "s", "m", "k"]

FIRST_NAMES = [
    "Maria",
    "James",
    "Aisha",
    "Kenji",
    "Sofia",
    "Lukas",
    "Fatima",
    "Daniel",
    "Priya",
    "Omar",
    "Elena",
    "Tomas",
    "Grace",
    "Ahmed",
    "Lucia",
    "Hannah",
    "Mateo",
    "Ingrid",
    "Samuel",
    "Mei",
    "Alice",
    "Bob",
    "Carla",
    "Deepak",
    "Farid",
    "Hiro",
    "Ines",
    "Jonas",
    "Nora",
    "Ravi",
    "Yusuf",
    "Leila",
    "Marco",
    "Anya",
    "Pedro",
    "Zara",
]
PLACES = [
    "Boston",
    "Chicago",
    "Toronto",
    "Madrid",
    "Lisbon",
    "Nairobi",
    "Oslo",
    "Seoul",
    "Melbourne",
    "Denver",
    "Lyon",
    "Munich",
    "Dublin",
    "Helsinki",
    "Austin",
    "Montreal",
    "Accra",
    "Warsaw",
    "Kyoto",
    "Zurich",
    "Portland",
    "Glasgow",
    "Porto",
    "Bergen",
    "Phoenix",
    "Paris",
    "Cairo",
    "Lima",
    "Quito",
    "Hanoi",
]
COLOURS = [
    "red",
    "blue",
    "green",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "grey",
    "silver",
    "golden",
    "brown",
]
ANIMALS = [
    "fox",
    "heron",
    "hare",
    "deer",
    "owl",
    "badger",
    "otter",
    "crow",
    "wolf",
    "lynx",
    "swan",
    "beaver",
]
OBJECTS = [
    "lantern",
    "map",
    "rope",
    "basket",
    "compass",
    "kettle",
    "blanket",
    "ladder",
    "notebook",
    "bucket",
    "shovel",
    "telescope",
]

# Each kind of invented name: how it is spelled, and the sentences it appears in. A kind is
# recognised by its ending and its context, just as a model must recognise a drug by its suffix.
KINDS: dict[str, dict[str, object]] = {
    "mineral": {
        "endings": ["ite", "lite", "clase", "spar", "tite", "nite", "dite"],
        "capital": False,
        "templates": [
            "The miners near {place} found {x0} and {x1} in the old shaft.",
            "{first} polished a piece of {x0} from {place}.",
            "A {colour} vein of {x0} ran through the rock beside the {animal} den.",
            "Samples of {x0}, {x1} and {x2} were sent to the lab in {place}.",
            "The museum in {place} shows {x0} next to a {object}.",
        ],
    },
    "plant": {
        "endings": ["wort", "thorn", "bloom", "fern", "moss", "weed", "root"],
        "capital": False,
        "templates": [
            "{first} planted {x0} and {x1} in the garden behind the house.",
            "Along the river near {place}, {x0} grows between the stones.",
            "The {animal} ate the {colour} leaves of the {x0}.",
            "A field of {x0}, {x1} and {x2} covered the hill above {place}.",
            "{first} pressed a sprig of {x0} inside a {object}.",
        ],
    },
    "town": {
        "endings": ["ford", "holm", "stad", "ville", "burg", "field", "wick"],
        "capital": True,
        "templates": [
            "{first} took the train from {x0} to {x1} on a {colour} morning.",
            "The road to {x0} passes a lake where a {animal} lives.",
            "Farmers from {x0}, {x1} and {x2} met at the market.",
            "{first} grew up in {x0} before moving to {place}.",
            "A storm closed the bridge between {x0} and {x1}.",
        ],
    },
    "star": {
        "endings": ["aris", "ion", "ara", "elle", "ox", "une"],
        "capital": True,
        "templates": [
            "On clear nights {first} could see {x0} and {x1} from {place}.",
            "The telescope in {place} tracked {x0} for a whole week.",
            "{x0} shines {colour} just above the horizon in winter.",
            "Sailors once steered by {x0}, {x1} and {x2}.",
            "{first} drew {x0} in a {object} during the trip.",
        ],
    },
    "company": {
        "endings": [" Labs", " Systems", " Foods", " Motors", " Works", " Media"],
        "capital": True,
        "templates": [
            "{first} left {x0} to join {x1} in {place}.",
            "{x0} opened a new office in {place} last spring.",
            "Shares of {x0}, {x1} and {x2} rose after the report.",
            "The {colour} {object} was made by {x0}.",
            "Engineers at {x0} built a robot shaped like a {animal}.",
        ],
    },
    "person": {
        "endings": ["son", "sen", "ez", "ova", "ski", "ani", "berg"],
        "capital": True,
        "templates": [
            "{x0} and {x1} walked to the lake near {place}.",
            "The letter from {x0} arrived with a {colour} stamp.",
            "{x0}, {x1} and {x2} repaired the old {object} together.",
            "In {place}, {x0} saw a {animal} by the road.",
            "{x0} lent a {object} to {x1}.",
        ],
    },
}
PLAIN = [
    "{first} walked to the market in {place} and bought a {colour} {object}.",
    "A {animal} crossed the path near the camp in {place}.",
    "By evening the sky over {place} had turned {colour}.",
    "{first} packed a {object} and a {object2} for the trip to {place}.",
    "Nobody in {place} had seen a {colour} {animal} before.",
]
INSTRUCTIONS = [
    "List the {kind} names as a JSON list.",
    "List the {kind} names in the text as a JSON list.",
    "Which {kind} names appear? Answer with a JSON list.",
    "Extract every {kind} name as a JSON list.",
]
PLURALS = {"person": "people"}


def syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def invented(rng: random.Random, kind: str) -> str:
    """A new name of ``kind``, e.g. ``brolite`` (mineral) or ``Tamford`` (town)."""
    spec = KINDS[kind]
    stem = "".join(syllable(rng) for _ in range(rng.randint(1, 3)))
    ending = rng.choice(spec["endings"])  # type: ignore[arg-type]
    name = stem + ending
    if kind == "person":
        return f"{rng.choice(FIRST_NAMES)} {name.capitalize()}"
    return name[0].upper() + name[1:] if spec["capital"] else name


def fill(rng: random.Random, template: str, names: dict[str, str]) -> str:
    text = template.format(
        **names,
        first=rng.choice(FIRST_NAMES),
        place=rng.choice(PLACES),
        colour=rng.choice(COLOURS),
        animal=rng.choice(ANIMALS),
        object=rng.choice(OBJECTS),
        object2=rng.choice(OBJECTS),
    )
    return text[0].upper() + text[1:]


def kind_sentence(rng: random.Random, kind: str) -> tuple[str, list[str]]:
    """A sentence about ``kind``, and the names of that kind in it, in order."""
    template: str = rng.choice(KINDS[kind]["templates"])  # type: ignore[arg-type]
    slots = sum(f"{{x{i}}}" in template for i in range(3))
    names = [invented(rng, kind) for _ in range(slots)]
    return fill(rng, template, {f"x{i}": n for i, n in enumerate(names)}), names


def extraction(rng: random.Random, kind: str = "") -> tuple[str, str, str]:
    """(instruction, text, JSON answer): one to three sentences; the answer lists one kind's names
    in order. About a quarter of the texts hold none of the asked kind, so ``[]`` is common too."""
    kind = kind or rng.choice(sorted(KINDS))
    others = [k for k in sorted(KINDS) if k != kind]
    kinds = [kind] if rng.random() < 0.8 else []
    kinds += [rng.choice(others) for _ in range(rng.randint(0 if kinds else 1, 1))]
    parts = [(k, *kind_sentence(rng, k)) for k in kinds]
    if rng.random() < 0.3:
        parts.append(("", fill(rng, rng.choice(PLAIN), {}), []))
    rng.shuffle(parts)
    text = " ".join(sentence for _, sentence, _ in parts)
    answer = [name for k, _, names in parts if k == kind for name in names]
    instruction = rng.choice(INSTRUCTIONS).format(kind=kind)
    if kind == "person":
        instruction = instruction.replace("person names", "names of people")
    return instruction, text, json.dumps(answer)


def record(rng: random.Random) -> tuple[str, str, str]:
    """(instruction, text, JSON answer): a JSON record of two names from the text."""
    person, town = invented(rng, "person"), invented(rng, "town")
    company = invented(rng, "company")
    text = fill(
        rng,
        rng.choice(
            [
                "{p} moved from {place} to {t} to work for {c}.",
                "{p} runs the {c} office in {t}.",
                "After ten years at {c}, {p} opened a bakery in {t}.",
            ]
        ),
        {"p": person, "t": town, "c": company},
    )
    keys = rng.sample(["person", "town", "company"], 2)
    values = {"person": person, "town": town, "company": company}
    instruction = f"Answer with a JSON object with the keys {keys[0]} and {keys[1]}."
    return instruction, text, json.dumps({k: values[k] for k in keys})


def count(rng: random.Random) -> tuple[str, str, str]:
    """(instruction, text, answer): how many names of one kind the text holds, as a number."""
    kind = rng.choice(sorted(KINDS))
    _, text, answer = extraction(rng, kind)
    noun = "names of people" if kind == "person" else f"{kind} names"
    return (
        f"How many {noun} are in the text? Answer with a number.",
        text,
        str(len(json.loads(answer))),
    )


def repeat(rng: random.Random) -> tuple[str, str, str]:
    """(instruction, text, answer): copy the invented names of a sentence, in order."""
    kind = rng.choice(sorted(KINDS))
    sentence, names = kind_sentence(rng, kind)
    return (
        "Repeat the names in the sentence, in order, separated by commas.",
        sentence,
        ", ".join(names),
    )


def repeat_list(rng: random.Random) -> tuple[str, str, str]:
    """(instruction, text, answer): copy a list of invented names, or the ones of one kind."""
    names = [invented(rng, rng.choice(sorted(KINDS))) for _ in range(rng.randint(2, 6))]
    return "Repeat these names exactly, separated by commas.", ", ".join(names), ", ".join(names)


Task = Callable[[random.Random], tuple[str, str, str]]
PRETRAIN_TASKS: list[tuple[float, Task]] = [
    (0.7, extraction),
    (0.1, record),
    (0.1, count),
    (0.1, repeat),
]
"""The worked tasks inside the pretraining text."""
TASKS: list[tuple[float, Task]] = [
    (0.6, extraction),
    (0.1, record),
    (0.05, count),
    (0.1, repeat),
    (0.15, repeat_list),
]
"""The instruction chats: more plain copying than the pretraining text, since the answers are
all that this stage's loss covers."""


def task(rng: random.Random, tasks: list[tuple[float, Task]] = TASKS) -> tuple[str, str, str]:
    """One task, drawn by the weights of ``tasks``."""
    make = rng.choices([f for _, f in tasks], weights=[w for w, _ in tasks])[0]
    return make(rng)


def story(rng: random.Random) -> str:
    """A paragraph that names a few invented people, towns and things more than once, so that
    predicting the text means copying names seen earlier in it."""
    person, town = invented(rng, "person"), invented(rng, "town")
    thing_kind = rng.choice(["mineral", "plant", "star", "company"])
    thing = invented(rng, thing_kind)
    first = person.split()[0]
    lines = [
        f"{person} lived in {town}, a small town near {rng.choice(PLACES)}.",
        f"Every {rng.choice(['morning', 'evening', 'spring'])}, {first} walked from {town} "
        f"to the {rng.choice(['lake', 'hill', 'forest', 'market'])}.",
        f"People in {town} still talk about the day {first} found the {thing_kind} {thing}.",
        f"{person} wrote about {thing} in a {rng.choice(COLOURS)} {rng.choice(OBJECTS)}.",
        f"Years later, {thing} was still the pride of {town}, and {first} was still proud of it.",
    ]
    return " ".join(lines[: rng.randint(3, 5)])


def pretraining_text(rng: random.Random) -> str:
    """One document of the continued-pretraining stage: stories, plain sentences and worked
    tasks written as text."""
    blocks: list[str] = []
    for _ in range(rng.randint(3, 6)):
        roll = rng.random()
        if roll < 0.35:
            blocks.append(story(rng))
        elif roll < 0.5:
            blocks.append(" ".join(fill(rng, rng.choice(PLAIN), {}) for _ in range(3)))
        else:
            instruction, text, answer = task(rng, PRETRAIN_TASKS)
            blocks.append(f"{instruction}\nText: {text}\nAnswer: {answer}")
    return "\n\n".join(blocks) + "\n"


def chat_record(rng: random.Random) -> dict[str, object]:
    """One conversation of the instruction stage: the task as the system message, the text as
    the user's and the answer as the assistant's (the layout of the drug-name tutorial's data)."""
    instruction, text, answer = task(rng)
    return {
        "messages": [
            {"role": "system", "content": instruction},
            {"role": "user", "content": text},
            {"role": "assistant", "content": answer},
        ]
    }
