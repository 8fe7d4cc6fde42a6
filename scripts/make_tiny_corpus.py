"""Write ``src/ftmagic/resources/tiny_corpus.txt``, the text the tiny models' tokenizers learn from.

The corpus is generated, not downloaded, so it is reproducible and has no licence questions.
It mixes plain English, chat-like dialogue, JSON records and a little code and numbers, so the
tokenizer learns the pieces that fine-tuning data is made of. Run it again to change the corpus:

    python scripts/make_tiny_corpus.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TARGET_BYTES = 320_000
OUT = Path(__file__).resolve().parents[1] / "src" / "ftmagic" / "resources" / "tiny_corpus.txt"

SUBJECTS = [
    "the model",
    "a data scientist",
    "the team",
    "our customer",
    "the engineer",
    "the notebook",
    "the cluster",
    "a small company",
    "the analyst",
    "the teacher",
    "my friend",
    "the city",
    "the river",
    "a young student",
    "the old library",
    "the weather service",
    "the new system",
    "the research group",
    "the support agent",
    "the assistant",
]
VERBS = [
    "reads",
    "writes",
    "trains",
    "finds",
    "builds",
    "checks",
    "explains",
    "measures",
    "improves",
    "describes",
    "answers",
    "collects",
    "cleans",
    "tests",
    "saves",
    "loads",
    "compares",
    "sends",
    "learns",
    "shows",
]
OBJECTS = [
    "the report",
    "a long document",
    "every question",
    "the training data",
    "a clear answer",
    "the results",
    "a short summary",
    "the weekly numbers",
    "a new recipe",
    "the map",
    "the evaluation set",
    "the loss curve",
    "a list of names",
    "the invoice",
    "the schedule",
    "a friendly email",
    "the configuration",
    "the checkpoint",
    "the history of the town",
    "a careful plan",
]
ENDINGS = [
    "before the meeting",
    "after lunch",
    "every morning",
    "with great care",
    "in a few minutes",
    "without any help",
    "for the first time",
    "on the shared drive",
    "at the end of the day",
    "because it matters",
    "so that everyone can follow",
    "while the rain falls",
    "in the notebook",
    "during the night",
    "for the whole team",
]
CONNECTORS = [
    "Then",
    "Later",
    "However,",
    "Meanwhile,",
    "After that,",
    "Still,",
    "Finally,",
    "Also,",
]
QUESTIONS = [
    "What is the capital of {place}?",
    "How do I {task}?",
    "Can you explain {topic} simply?",
    "Summarize this: {sentence}",
    "Extract the names from: {sentence}",
    "Translate to French: {sentence}",
    "Why does {topic} matter?",
    "Write a haiku about {topic}.",
    "List three facts about {place}.",
    "Is it true that {sentence_lower}",
]
PLACES = [
    "France",
    "Japan",
    "Kenya",
    "Brazil",
    "Canada",
    "Norway",
    "India",
    "Egypt",
    "Peru",
    "Spain",
    "Italy",
    "Chile",
    "Ghana",
    "Vietnam",
    "Poland",
]
TASKS = [
    "sort a list in Python",
    "fine-tune a language model",
    "read a CSV file",
    "bake bread",
    "plan a trip",
    "write a cover letter",
    "fix a flat tire",
    "learn to swim",
    "clean my data",
    "compute an average",
]
TOPICS = [
    "gradient descent",
    "photosynthesis",
    "the water cycle",
    "compound interest",
    "tokenization",
    "learning rates",
    "overfitting",
    "the moon",
    "music theory",
    "recycling",
]
NAMES = ["Alice", "Bob", "Carla", "Deepak", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas"]
WORD_TEXT = """
time person year way day thing man world life hand part child eye woman place work week case
point government company number group problem fact be have do say get make go know take see come
think look want give use find tell ask seem feel try leave call good new first last long great
little own other old right big high different small large next early young important few public
bad same able to of in for on with at by from up about into over after beneath under above the
and a that I it not he as you this but his they her she or an will my one all would there their
what so out if who which me when can like no just him people your some could them than then now
only its also back two how our well even because any these most us water history music art money
story month lot study book job word business issue side kind head house service friend father
power hour game line end member law car city community name president team minute idea kid body
information school face others level office door health war party result change morning reason
research girl guy moment air teacher force education foot boy age policy process market sense
nation plan college interest death experience effect class control care field development role
effort rate heart drug show leader light voice wife police mind price report decision son view
relationship town road arm difference value building action model season society tax director
position player record paper space ground form event official matter center couple site project
activity star table need court oil situation cost industry figure street image phone data
picture practice piece land product doctor wall patient worker news test movie north love
support technology step baby computer type attention film tree source organization hair window
evidence population truth song bridge garden kitchen mountain ocean forest island valley desert
winter summer autumn spring yellow purple orange green blue silver golden quiet loud gentle
brave clever curious happy sad angry calm proud honest simple complex ancient modern rapid slow
bright dark warm cold fresh heavy empty full rich poor strong weak narrow wide deep shallow
smooth rough sharp soft quickly slowly carefully easily suddenly finally usually often rarely
always never sometimes together apple banana bread butter cheese coffee tea sugar salt pepper
honey rice soup salad chicken fish keyboard monitor server network database pipeline gradient
tensor vector matrix parameter optimizer epoch batch token sequence layer embedding vocabulary
template checkpoint adapter experiment metric accuracy precision recall benchmark dataset
inference latency throughput memory storage cache question answer summary translation extraction
classification sentiment review invoice receipt order customer shipping delivery payment refund
account password email address calendar meeting monday tuesday wednesday thursday friday
saturday sunday january february march april may june july august september october november
december evening afternoon midnight yesterday tomorrow today
"""
WORDS = WORD_TEXT.split()
CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "import json\nwith open('data.jsonl') as f:\n    rows = [json.loads(line) for line in f]\n",
    "SELECT name, COUNT(*) FROM users GROUP BY name;\n",
    "if loss < best:\n    best = loss\n    save(model)\n",
]


def sentence(rng: random.Random) -> str:
    text = (
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}."
    )
    return text[0].upper() + text[1:]


def paragraph(rng: random.Random) -> str:
    parts = [sentence(rng)]
    for _ in range(rng.randint(2, 6)):
        nxt = sentence(rng)
        parts.append(f"{rng.choice(CONNECTORS)} {nxt[0].lower()}{nxt[1:]}")
    return " ".join(parts)


def word_salad(rng: random.Random) -> str:
    """Loose sentences over a wider vocabulary, so BPE learns more than the templates' words."""
    sentences = []
    for _ in range(rng.randint(2, 5)):
        words = rng.sample(WORDS, rng.randint(5, 14))
        sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?", ";"]))
    return " ".join(sentences)


def question(rng: random.Random) -> str:
    said = sentence(rng)
    return rng.choice(QUESTIONS).format(
        place=rng.choice(PLACES),
        task=rng.choice(TASKS),
        topic=rng.choice(TOPICS),
        sentence=said,
        sentence_lower=said[0].lower() + said[1:-1] + "?",
    )


def answer(rng: random.Random) -> str:
    name = rng.choice(NAMES)
    number = rng.randint(0, 9999)
    extras = [
        f"{name} said the answer is {number}.",
        f"Here is a short answer: {paragraph(rng)}",
        f"Sure! {sentence(rng)} {sentence(rng)}",
        f"Step 1: {sentence(rng)}\nStep 2: {sentence(rng)}\nStep 3: {sentence(rng)}",
        f"```python\n{rng.choice(CODE)}```",
        json.dumps({"name": name, "count": number, "ok": rng.random() < 0.5}),
    ]
    return rng.choice(extras)


def chat_record(rng: random.Random) -> str:
    messages = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": "You are a helpful assistant."})
    for _ in range(rng.randint(1, 3)):
        messages.append({"role": "user", "content": question(rng)})
        messages.append({"role": "assistant", "content": answer(rng)})
    return json.dumps({"messages": messages}, ensure_ascii=False)


def dialogue(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(1, 3)):
        lines.append(f"User: {question(rng)}")
        lines.append(f"Assistant: {answer(rng)}")
    return "\n".join(lines)


def instruction_record(rng: random.Random) -> str:
    return json.dumps({"prompt": question(rng), "response": answer(rng)}, ensure_ascii=False)


def block(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.25:
        return paragraph(rng)
    if kind < 0.40:
        return word_salad(rng)
    if kind < 0.60:
        return chat_record(rng)
    if kind < 0.80:
        return dialogue(rng)
    if kind < 0.92:
        return instruction_record(rng)
    return rng.choice(CODE)


def make_corpus(seed: int = 0, target_bytes: int = TARGET_BYTES) -> str:
    rng = random.Random(seed)
    blocks: list[str] = []
    size = 0
    while size < target_bytes:
        text = block(rng)
        blocks.append(text)
        size += len(text.encode("utf-8")) + 2
    return "\n\n".join(blocks) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(make_corpus(), encoding="utf-8")
