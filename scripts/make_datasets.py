"""Write the bundled example datasets under ``src/ftmagic/resources/``.

- ``ner/``: drug-name extraction as chat data (the hosted product's best-known tutorial, rebuilt).
  Each sentence mentions drugs, people, places and organisations; the assistant answers with a
  JSON list of the drug names only. The drug vocabulary is split three ways, so no eval or test drug
  ever appears in train: a model can only score by learning to copy drug-looking words.
- ``chat/``: small multi-turn chats (a shop assistant that keeps track of an order across turns).
- ``pretrain/``: folders of ``.txt`` files for continued pretraining.

Everything is generated from a seed, so running the script again writes identical files:

    python scripts/make_datasets.py
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "ftmagic" / "resources"
SEED = 2024
NER_SIZES = {"train": 8000, "eval": 250, "test": 250}
CHAT_SIZES = {"train": 600, "eval": 60}
NER_SYSTEM = "List the drug names as a JSON list."


def words(text: str) -> list[str]:
    """The whitespace-separated words of ``text`` (keeps long vocabularies readable)."""
    return text.split()


# --- drug vocabulary ----------------------------------------------------------------------------
# Real generic names grouped by their class suffix, plus invented names built from the same
# suffixes: the suffix and the sentence context are what a model can learn to recognise.
REAL_DRUGS = words(
    """
atorvastatin simvastatin rosuvastatin pravastatin lovastatin fluvastatin pitavastatin
lisinopril enalapril ramipril captopril benazepril quinapril perindopril fosinopril trandolapril
metoprolol atenolol propranolol bisoprolol carvedilol nadolol labetalol nebivolol sotalol timolol
losartan valsartan irbesartan candesartan olmesartan telmisartan
adalimumab infliximab rituximab trastuzumab bevacizumab pembrolizumab nivolumab cetuximab
omalizumab denosumab ustekinumab tocilizumab
amoxicillin ampicillin penicillin dicloxacillin piperacillin nafcillin oxacillin
fluconazole ketoconazole itraconazole voriconazole metronidazole clotrimazole posaconazole
omeprazole pantoprazole esomeprazole lansoprazole rabeprazole
imatinib erlotinib gefitinib dasatinib nilotinib sunitinib lapatinib ibrutinib
acyclovir valacyclovir oseltamivir tenofovir sofosbuvir remdesivir ritonavir lopinavir
amlodipine nifedipine felodipine nicardipine
ciprofloxacin levofloxacin moxifloxacin ofloxacin
azithromycin erythromycin clarithromycin vancomycin clindamycin streptomycin
sitagliptin saxagliptin linagliptin pioglitazone rosiglitazone
metformin insulin warfarin heparin aspirin ibuprofen naproxen acetaminophen prednisone
dexamethasone methotrexate gabapentin sertraline fluoxetine citalopram escitalopram paroxetine
levothyroxine furosemide hydrochlorothiazide spironolactone clopidogrel apixaban rivaroxaban
dabigatran tamoxifen cisplatin carboplatin oxaliplatin doxorubicin cyclophosphamide montelukast
albuterol budesonide fluticasone loratadine cetirizine tramadol morphine oxycodone quetiapine
olanzapine risperidone haloperidol lorazepam diazepam alprazolam zolpidem allopurinol colchicine
digoxin amiodarone hydroxychloroquine ivermectin
"""
)
SUFFIXES = [
    "statin",
    "pril",
    "olol",
    "sartan",
    "mab",
    "cillin",
    "azole",
    "prazole",
    "tinib",
    "vir",
    "dipine",
    "floxacin",
    "mycin",
    "gliptin",
    "glitazone",
    "lukast",
    "parin",
    "tidine",
    "oxetine",
    "zepam",
    "platin",
    "triptan",
    "setron",
    "dronate",
]
ONSETS = [
    "b",
    "br",
    "c",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "tr",
    "v",
    "z",
    "x",
]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o"]
CODAS = ["", "", "", "n", "r", "l", "s", "x", "m"]

# --- other entities (distractors, shared by all splits) -----------------------------------------
PEOPLE = words(
    """
Alvarez Chen Okafor Schmidt Tanaka Rossi Novak Haddad Kowalski Dubois Patel Nguyen Larsen
Moreau Silva Fischer Ivanova Mensah Johansson Costa Yilmaz Murphy Kim Garcia Andersen Weber
Nakamura Rahman Osei Bianchi
"""
)
FIRST_NAMES = words(
    """
Maria James Aisha Kenji Sofia Lukas Fatima Daniel Priya Omar Elena Tomas Grace Ahmed Lucia
Hannah Mateo Ingrid Samuel Mei
"""
)
PLACES = words(
    """
Boston Chicago Toronto Madrid Lisbon Nairobi Oslo Seoul Melbourne Denver Lyon Munich Dublin
Helsinki Austin Montreal Accra Warsaw Kyoto Zurich Portland Glasgow Porto Bergen Phoenix
"""
)
ORGS = [
    "Mayo Clinic",
    "Johns Hopkins Hospital",
    "Cleveland Clinic",
    "the World Health Organization",
    "Novartis",
    "Pfizer",
    "Roche",
    "Merck",
    "Sanofi",
    "AstraZeneca",
    "Bayer",
    "Karolinska Institute",
    "Charite",
    "Mass General",
    "St. Mary's Hospital",
    "the National Cancer Institute",
    "the Red Cross",
    "Doctors Without Borders",
    "Stanford Health",
    "the FDA",
    "the EMA",
    "Kaiser Permanente",
    "Mount Sinai",
    "the Royal Infirmary",
    "Northwell Health",
]
CONDITIONS = words(
    """
hypertension diabetes asthma pneumonia arthritis migraine depression epilepsy psoriasis anemia
bronchitis gout angina insomnia eczema sepsis influenza hepatitis lymphoma osteoporosis
"""
)
OUTCOMES = [
    "fewer headaches",
    "lower blood pressure",
    "mild nausea",
    "better sleep",
    "stable weight",
    "no serious side effects",
    "faster recovery",
    "improved mobility",
    "dizziness",
    "a drop in fever",
    "less pain",
    "fewer hospital visits",
]
MEASURES = [
    "blood pressure",
    "cholesterol",
    "blood sugar",
    "heart rate",
    "viral load",
    "inflammation",
    "tumour size",
    "liver enzymes",
    "potassium",
]
SYMPTOMS = [
    "chest pain",
    "a rash",
    "fatigue",
    "a cough",
    "fever",
    "swelling",
    "back pain",
    "nausea",
]

# Each template names its drug slots {d0}, {d1}, {d2} in order of appearance.
NER_TEMPLATES = [
    "Patients receiving {d0} and {d1} at {org} reported {outcome}.",
    "Dr. {person} prescribed {d0} for {condition} after a visit in {place}.",
    "In a trial run by {org} in {place}, {d0} lowered {measure} more than placebo.",
    "{first} {person} from {place} stopped taking {d0} because of {symptom}.",
    "The {org} team compared {d0}, {d1} and {d2} in {n} adults with {condition}.",
    "A {age}-year-old man on {d0} came to {org} with {symptom}.",
    "Giving {d0} with {d1} raised {measure} in {n} patients in {place}.",
    "Dr. {person} switched her patient from {d0} to {d1} at {org}.",
    "{org} recalled a batch of {d0} sold in {place}.",
    "Nurses in {place} gave {d0} twice a day to patients with {condition}.",
    "After surgery at {org}, {first} {person} was treated with {d0} and {d1}.",
    "The label for {d0} warns about {symptom} when it is taken with {d1}.",
    "{first} asked Dr. {person} whether {d0} could cause {symptom}.",
    "A study from {place} found that {d0} reduced {measure} by {pct} percent.",
    "Doses of {d0} above {mg} mg were linked to {symptom} in a report by {org}.",
    "For {condition}, guidelines from {org} favour {d0} over {d1}.",
    "The pharmacy in {place} ran out of {d0}, so Dr. {person} used {d1} instead.",
    "{first} {person} takes {d0} every morning and {d1} at night.",
    "Researchers at {org} added {d0} to standard care for {condition}.",
    "Combining {d0}, {d1} and {d2} helped {n} patients at {org} with {condition}.",
    "Dr. {person} presented results on {condition} at {org} in {place}.",
    "{first} {person} moved from {place} to work for {org}.",
    "A team at {org} in {place} studied {condition} in {n} children.",
    "Patients with {condition} in {place} reported {outcome} after rest alone.",
]


def syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def invented_drugs(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    """``count`` new drug-like names such as ``bravostatin``, none of them in ``taken``."""
    names: list[str] = []
    while len(names) < count:
        stem = "".join(syllable(rng) for _ in range(rng.randint(1, 2)))
        suffix = rng.choice(SUFFIXES)
        if stem[-1] in "aeiou" and suffix[0] in "aeiou":
            stem = stem[:-1]
        name = stem + suffix
        if len(name) >= 6 and name not in taken:
            taken.add(name)
            names.append(name)
    return names


def drug_splits(rng: random.Random) -> dict[str, list[str]]:
    """Disjoint drug vocabularies: small ones for eval and test (real and invented names in each),
    and enough fresh names for every drug slot of train, so that no train name repeats either."""
    real = sorted(set(REAL_DRUGS))
    rng.shuffle(real)
    cut_eval, cut_test = int(len(real) * 0.76), int(len(real) * 0.88)
    invented = invented_drugs(rng, 3 * NER_SIZES["train"] + 200, set(REAL_DRUGS))
    return {
        "train": real[:cut_eval] + invented[200:],
        "eval": real[cut_eval:cut_test] + invented[:100],
        "test": real[cut_test:] + invented[100:200],
    }


def ner_sentence(rng: random.Random, pick: Callable[[int], list[str]]) -> tuple[str, list[str]]:
    template = rng.choice(NER_TEMPLATES)
    slots = sum(f"{{d{i}}}" in template for i in range(3))
    chosen = pick(slots)
    text = template.format(
        **{f"d{i}": name for i, name in enumerate(chosen)},
        org=rng.choice(ORGS),
        person=rng.choice(PEOPLE),
        first=rng.choice(FIRST_NAMES),
        place=rng.choice(PLACES),
        condition=rng.choice(CONDITIONS),
        outcome=rng.choice(OUTCOMES),
        measure=rng.choice(MEASURES),
        symptom=rng.choice(SYMPTOMS),
        n=rng.randint(12, 480),
        age=rng.randint(19, 88),
        pct=rng.randint(5, 60),
        mg=rng.choice([50, 100, 200, 250, 500, 1000]),
    )
    return text[0].upper() + text[1:], chosen


def ner_record(sentence: str, drugs: list[str]) -> dict[str, object]:
    return {
        "messages": [
            {"role": "system", "content": NER_SYSTEM},
            {"role": "user", "content": sentence},
            {"role": "assistant", "content": json.dumps(drugs)},
        ]
    }


def make_ner(rng: random.Random) -> dict[str, list[dict[str, object]]]:
    """The splits. Train draws its names without replacement (each name once), so a model can
    only lower its loss by copying names from the sentence; eval and test reuse their small
    vocabularies."""
    vocab = drug_splits(rng)
    out: dict[str, list[dict[str, object]]] = {}
    for split, size in NER_SIZES.items():
        names = vocab[split]
        rng.shuffle(names)

        def pick(k: int, names: list[str] = names, split: str = split) -> list[str]:
            if split == "train":
                return [names.pop() for _ in range(k)]
            return rng.sample(names, k)

        seen: set[str] = set()
        records = []
        while len(records) < size:
            sentence, drugs = ner_sentence(rng, pick)
            if sentence not in seen:
                seen.add(sentence)
                records.append(ner_record(sentence, drugs))
        out[split] = records
    return out


# --- chat: a shop assistant that keeps an order across turns --------------------------------------
PRODUCTS = {
    "apples": 3,
    "bread": 4,
    "coffee": 9,
    "tea": 6,
    "rice": 5,
    "cheese": 7,
    "honey": 8,
    "pasta": 2,
    "butter": 5,
    "milk": 2,
    "eggs": 4,
    "soup": 3,
    "salad": 6,
    "fish": 12,
}
CHAT_SYSTEM = "You are the order assistant of a small grocery shop. Keep track of the order."


def chat_conversation(rng: random.Random) -> dict[str, object]:
    """Two to four turns; the answers depend on earlier turns (running total, item count)."""
    messages: list[dict[str, str]] = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": CHAT_SYSTEM})
    order: dict[str, int] = {}
    for _ in range(rng.randint(2, 4)):
        kind = rng.random()
        if kind < 0.6 or not order:
            item = rng.choice(sorted(PRODUCTS))
            qty = rng.randint(1, 5)
            order[item] = order.get(item, 0) + qty
            user = f"Add {qty} {item}, please."
            reply = f"Added {qty} {item} at {PRODUCTS[item]} dollars each."
        elif kind < 0.8:
            user = "What is the total so far?"
            total = sum(PRODUCTS[i] * q for i, q in order.items())
            reply = f"Your total is {total} dollars."
        else:
            user = "What is in my order?"
            reply = "You have " + ", ".join(f"{q} {i}" for i, q in order.items()) + "."
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": reply})
    return {"messages": messages}


def make_chat(rng: random.Random) -> dict[str, list[dict[str, object]]]:
    return {split: [chat_conversation(rng) for _ in range(n)] for split, n in CHAT_SIZES.items()}


# --- continued pretraining: plain-text field notes ---------------------------------------------
TOPIC_SENTENCES: list[Callable[[random.Random], str]] = [
    lambda r: f"The river near {r.choice(PLACES)} rose {r.randint(2, 90)} centimetres overnight.",
    lambda r: f"Volunteers from {r.choice(ORGS)} counted {r.randint(10, 900)} birds on the shore.",
    lambda r: f"In {r.choice(PLACES)} the morning was {r.choice(['cold', 'mild', 'windy'])}.",
    lambda r: f"{r.choice(FIRST_NAMES)} wrote down the water temperature at noon.",
    lambda r: f"The team measured the snow depth at {r.randint(3, 40)} points along the trail.",
    lambda r: f"A {r.choice(['fox', 'heron', 'deer', 'hare'])} crossed the path near the camp.",
    lambda r: f"By evening the wind had turned {r.choice(['north', 'south', 'east', 'west'])}.",
    lambda r: f"{r.choice(FIRST_NAMES)} and {r.choice(FIRST_NAMES)} repaired the old bridge.",
    lambda r: f"The station logged {r.randint(1, 30)} millimetres of rain in {r.choice(PLACES)}.",
    lambda r: "Everyone returned to the hut before dark and shared the notes.",
]
PRETRAIN_FILES = {"train": 24, "eval": 3}


def field_notes(rng: random.Random, paragraphs: int) -> str:
    text = []
    for _ in range(paragraphs):
        text.append(" ".join(rng.choice(TOPIC_SENTENCES)(rng) for _ in range(rng.randint(4, 8))))
    return "\n\n".join(text) + "\n"


# --- writing ----------------------------------------------------------------------------------
def write_jsonl(path: Path, records: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps(r, ensure_ascii=False) for r in records)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build(out: Path) -> None:
    """Write every bundled dataset under ``out`` (the package's resources folder by default)."""
    # One generator per dataset, so changing one dataset leaves the others as they are.
    for split, records in make_ner(random.Random(SEED)).items():
        write_jsonl(out / "ner" / f"{split}.jsonl", records)
    rng = random.Random(SEED + 1)
    for split, records in make_chat(rng).items():
        write_jsonl(out / "chat" / f"{split}.jsonl", records)
    for split, count in PRETRAIN_FILES.items():
        folder = out / "pretrain" / split
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.txt"):
            old.unlink()
        for i in range(count):
            (folder / f"notes_{i:02d}.txt").write_text(field_notes(rng, 12), encoding="utf-8")


def main() -> None:
    build(OUT)


if __name__ == "__main__":
    main()
