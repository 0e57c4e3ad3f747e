"""Knowledge bases for ``lmpo/Support-v0``: entities with attributes, the questions customers ask about them, and
the lookup tool that reads them.

An entity is one row: a ``name`` and attribute values (strings; an empty value means the attribute does not apply
to it, as a product has no order status). ``shop()`` builds lmpo's own fictional shop deterministically (600
products and 600 orders, nothing downloaded); ``load_knowledge_base`` reads a user's CSV or JSONL file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lmpo.data.corpus import jsonl_objects, read_utf8
from lmpo.data.matching import MONTHS, as_date, normalize

Row = dict[str, str]


class KnowledgeBaseError(ValueError):
    """A knowledge-base file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class Attribute:
    """What can be asked about an entity: the question phrasings and the concise answer agents give."""

    key: str
    label: str  # how the tool's row names it
    questions: tuple[str, ...]  # templates with {name}; the training phrasings
    heldout_questions: tuple[str, ...] = ()  # phrasings kept for evaluation only
    answer: str = "The {label} is {value}."  # the concise answer of the transcripts

    @classmethod
    def default(cls, key: str) -> Attribute:
        """Generic phrasings for an attribute of a user's knowledge base."""
        label = key.replace("_", " ")
        return cls(key, label,
                   (f"What is the {label} of {{name}}?", f"Tell me the {label} of {{name}}.",
                    f"What's the {label} for {{name}}?"),
                   (f"Could you tell me the {label} of {{name}}?",))


@dataclass
class KnowledgeBase:
    """Entities (rows with a ``name``) and what can be asked about them."""

    rows: list[Row]
    attributes: dict[str, Attribute]
    _idf: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        names = Counter(self.key(r["name"]) for r in self.rows)
        dup = [n for n, c in names.items() if c > 1]
        if dup:
            raise KnowledgeBaseError(f"entity names must be distinct; repeated: {dup[:3]}")
        words = [set(normalize(r["name"])) for r in self.rows]  # normalised and weighed once, not per lookup
        df = Counter(t for w in words for t in w)
        self._idf = {t: math.log(1 + len(self.rows) / c) for t, c in df.items()}
        self._by_key = {self.key(r["name"]): r for r in self.rows}
        self._names = [(w, sum(self._idf[t] for t in w), r) for w, r in zip(words, self.rows, strict=True)]
        self._with_word: dict[str, list[int]] = {}  # word -> the names holding it: a lookup scores only those
        for i, w in enumerate(words):
            for t in w:
                self._with_word.setdefault(t, []).append(i)
        self._labels = sorted(((k, normalize(a.label)) for k, a in self.attributes.items()), key=lambda kl: -len(kl[1]))
        self.longest_name = max(len(k.split()) for k in self._by_key)
        self._values: dict[str, list[str]] = {}

    @staticmethod
    def key(name: str) -> str:
        """Names compare after normalisation."""
        return " ".join(normalize(name))

    def get(self, name: str) -> Row | None:
        """The entity called ``name`` (normalised), if any."""
        return self._by_key.get(self.key(name))

    def values(self, attribute: str) -> list[str]:
        """The distinct values of ``attribute`` (for a customer who rejects a list of every possible value)."""
        if attribute not in self._values:
            self._values[attribute] = sorted({r[attribute] for r in self.rows if r.get(attribute)})
        return self._values[attribute]

    def askable(self, row: Row) -> list[str]:
        """The attributes of ``row`` that have a value."""
        return [a for a in self.attributes if row.get(a)]

    # ------------------------------------------------------------------------------------------- the tool
    def lookup(self, query: str, k: int = 1, threshold: float = 0.5) -> list[Row]:
        """The ``k`` rows whose names best match ``query``: the IDF-weighted share of a name's words that the
        query contains (rare words such as an order number count most), ties broken by the share of the query's
        words that the name contains (so "iPhone 15 Pro" finds itself, not "iPhone 15"); rows under ``threshold``
        never match."""
        words = set(normalize(query))
        if not words:
            return []
        if threshold <= 0:  # every name may match, sharing a word with the query or not
            shared = {i: name & words for i, (name, _, _) in enumerate(self._names)}
            weight = {i: sum(self._idf[t] for t in common) for i, common in shared.items()}
            hits = {i: len(common) for i, common in shared.items()}
        else:  # only names sharing a word can reach the threshold: walk the query words' names
            weight, hits = {}, {}
            for t in words:
                for i in self._with_word.get(t, ()):
                    weight[i] = weight.get(i, 0.0) + self._idf[t]
                    hits[i] = hits.get(i, 0) + 1
        scored = []
        for i, w in weight.items():
            _, total, r = self._names[i]
            score = w / total if total else 0.0
            if score >= threshold:
                scored.append((-score, -hits[i] / len(words), r["name"], r))
        scored.sort(key=lambda s: s[:3])
        return [s[3] for s in scored[:k]]

    def mentioned(self, text: str) -> list[str]:
        """Normalised names of the entities ``text`` mentions, longest match first ("iPhone 15 Pro" is one
        mention, not also one of "iPhone 15")."""
        words, found, i = normalize(text), [], 0
        while i < len(words):
            for n in range(min(self.longest_name, len(words) - i), 0, -1):
                name = " ".join(words[i:i + n])
                if name in self._by_key:
                    found.append(name)
                    i += n
                    break
            else:
                i += 1
        return found

    def fields_in(self, query: str, name: str = "") -> list[str]:
        """The attributes a query names by their labels ("price of Swift Cedar Lamp" -> ["price"]), longest label
        first ("expected delivery" is not also "delivery"); the words of the entity ``name`` in the query are not
        labels ("City Inn" does not ask for the city)."""
        words = normalize(query)
        _take(words, normalize(name))
        found = {key for key, label in self._labels if _take(words, label)}
        return [k for k in self.attributes if k in found]

    def format_row(self, row: Row, fields: Sequence[str] = ()) -> str:
        """A row as the tool shows it: ``name | label: value | ...``; only ``fields`` when the row has any of them
        (a query that names what it wants gets just that), else every attribute."""
        keys = [k for k in self.attributes if row.get(k)]
        keys = [k for k in keys if k in fields] or keys
        return " | ".join([row["name"]] + [f"{self.attributes[k].label}: {row[k]}" for k in keys])

    # ----------------------------------------------------------------------------------------- splits
    def split(self, fractions: Sequence[float], salt: str = "lmpo") -> list[list[Row]]:
        """Disjoint entity sets in the given proportions, each entity's side fixed by a hash of its name (adding
        or removing other rows never moves it). A row whose value names another entity (an order's product)
        goes where that entity goes, so that no set ever mentions another's entities."""
        edges = np.cumsum(fractions) / sum(fractions)

        def side(name: str) -> int:
            u = int.from_bytes(hashlib.sha256(f"{salt}\x00{self.key(name)}".encode()).digest()[:8], "big") / 2**64
            return min(int(np.searchsorted(edges, u, side="right")), len(fractions) - 1)

        out: list[list[Row]] = [[] for _ in fractions]
        for r in self.rows:
            linked = next((v for k, v in r.items() if k != "name" and v and self.get(v) is not None), None)
            out[side(linked or r["name"])].append(r)
        return out

    def stale(self, share: float, seed: int = 0) -> KnowledgeBase:
        """An older version of this knowledge base: each value changed with probability ``share`` (numbers moved,
        dates shifted, words swapped for another entity's), as agents remember it. A value that names an entity
        (an order's product) never changes."""
        rng = np.random.default_rng(seed)
        pools = {k: sorted({r[k] for r in self.rows if r.get(k)}) for k in self.attributes}
        rows = []
        for r in self.rows:
            old = dict(r)
            for k in self.attributes:
                if r.get(k) and rng.random() < share and self.get(r[k]) is None:
                    old[k] = _changed(r[k], pools[k], rng)
            rows.append(old)
        return KnowledgeBase(rows, self.attributes)


def _take(words: list[str], run: list[str]) -> bool:
    """Blank the first occurrence of the word run ``run`` in ``words`` (so no later match reuses it); whether it
    was there. An empty run is never there."""
    for i in range(len(words) - len(run) + 1):
        if run and words[i:i + len(run)] == run:
            words[i:i + len(run)] = [""] * len(run)
            return True
    return False


def _changed(value: str, pool: list[str], rng: np.random.Generator) -> str:
    """A different value of the same kind."""
    date = as_date(value)
    if date is not None:
        day = (date[1] + int(rng.integers(1, 9)) - 1) % 28 + 1
        return f"{MONTHS[date[0] - 1].capitalize()} {day}"
    number = re.search(r"\d+(?:\.\d+)?", value)
    if number:
        x = float(number.group())
        for _ in range(20):
            y = x * float(rng.uniform(0.6, 1.4)) + float(rng.integers(1, 4))
            new = f"{y:.2f}" if "." in number.group() else str(round(y))
            if new != number.group():
                return value[:number.start()] + new + value[number.end():]
    others = [v for v in pool if v != value]
    return str(rng.choice(others)) if others else value


# ----------------------------------------------------------------------------------------- lmpo's shop
_ADJECTIVES = ("Swift", "Quiet", "Bright", "Cozy", "Rapid", "Sturdy", "Gentle", "Bold", "Classic", "Smart", "Nimble",
               "Lunar", "Solar", "Arctic", "Urban", "Rustic", "Royal", "Silent", "Crisp", "Golden", "Misty", "Noble",
               "Prime", "Vivid")
_MATERIALS = ("Cedar", "Maple", "Granite", "Copper", "Velvet", "Bamboo", "Marble", "Linen", "Walnut", "Steel",
              "Cotton", "Leather", "Ceramic", "Glass", "Wool", "Oak", "Birch", "Slate", "Silk", "Brass")
_NOUNS = ("Lamp", "Kettle", "Chair", "Backpack", "Blender", "Desk", "Toaster", "Jacket", "Mug", "Pillow", "Speaker",
          "Clock", "Blanket", "Bottle", "Heater", "Fan", "Shelf", "Stool", "Wallet", "Candle", "Vase", "Mirror",
          "Rug", "Tray", "Skillet", "Teapot", "Helmet", "Tent", "Scarf", "Drill")
_COLOURS = ("red", "blue", "green", "black", "white", "grey", "teal", "orange", "purple", "yellow", "brown", "pink",
            "navy", "olive", "silver")
_STATUSES = ("processing", "shipped", "delivered", "cancelled", "returned")

SHOP_ATTRIBUTES = {
    "price": Attribute("price", "price",
                       ("How much is the {name}?", "What does the {name} cost?", "What's the price of the {name}?"),
                       ("Could you tell me how much the {name} costs?",), "It costs {value}."),
    "stock": Attribute("stock", "stock",
                       ("How many {name} units do you have?", "Is the {name} in stock?",
                        "How many of the {name} are in stock?"),
                       ("What's your current stock of the {name}?",), "We have {value} in stock."),
    "delivery": Attribute("delivery", "delivery",
                          ("How long does delivery of the {name} take?", "How fast can you deliver the {name}?",
                           "When would the {name} arrive if I order now?"),
                          ("What's the delivery time for the {name}?",), "Delivery takes {value}."),
    "warranty": Attribute("warranty", "warranty",
                          ("What warranty does the {name} have?", "How long is the warranty on the {name}?",
                           "Is the {name} under warranty, and for how long?"),
                          ("For how long is the {name} guaranteed?",), "The warranty is {value}."),
    "colour": Attribute("colour", "colour",
                        ("What colour is the {name}?", "Which colour does the {name} come in?",
                         "What's the colour of the {name}?"),
                        ("Tell me the colour of the {name}.",), "It is {value}."),
    "status": Attribute("status", "status",
                        ("What is the status of {name}?", "Where is {name}?", "Has {name} shipped yet?"),
                        ("Any news on {name}?",), "It is {value}."),
    "expected": Attribute("expected", "expected delivery",
                          ("When will {name} arrive?", "What is the delivery date of {name}?",
                           "When should I expect {name}?"),
                          ("On what day does {name} get here?",), "It should arrive on {value}."),
    "product": Attribute("product", "product",
                         ("What product is in {name}?", "What did I buy in {name}?", "Which item is {name}?"),
                         ("Remind me what {name} contains.",), "It contains the {value}."),
}


def shop(products: int = 600, orders: int = 600, seed: int = 0) -> KnowledgeBase:
    """lmpo's fictional shop: ``products`` products (names composed from word lists; price, units in stock,
    delivery days, warranty years, colour) and ``orders`` orders (number, product, status, expected date)."""
    rng = np.random.default_rng(seed)
    combos = len(_ADJECTIVES) * len(_MATERIALS) * len(_NOUNS)
    if products > combos or orders > 9000:
        raise ValueError(f"the shop has at most {combos} products and 9000 orders")
    rows: list[Row] = []
    names = []
    for i in rng.choice(combos, size=products, replace=False).tolist():
        a, rest = divmod(int(i), len(_MATERIALS) * len(_NOUNS))
        m, n = divmod(rest, len(_NOUNS))
        names.append(f"{_ADJECTIVES[a]} {_MATERIALS[m]} {_NOUNS[n]}")
        dollars = int(rng.integers(5, 400))
        rows.append({"name": names[-1], "price": f"${dollars}.{rng.choice(['99', '49', '00'])}",
                     "stock": f"{int(rng.integers(0, 250))} units", "delivery": f"{int(rng.integers(1, 15))} days",
                     "warranty": f"{int(rng.integers(1, 6))} years", "colour": str(rng.choice(_COLOURS))})
    for number in (rng.choice(9000, size=orders, replace=False) + 1000).tolist():
        month = int(rng.integers(1, 13))
        rows.append({"name": f"order {number}", "status": str(rng.choice(_STATUSES)),
                     "expected": f"{MONTHS[month - 1].capitalize()} {int(rng.integers(1, 29))}",
                     "product": str(rng.choice(names))})
    return KnowledgeBase(rows, SHOP_ATTRIBUTES)


# ------------------------------------------------------------------------------------- users' own files
def templates_beside(path: Path) -> dict[str, dict[str, Any]]:
    """The templates file that may sit beside a knowledge base (``shop.csv`` -> ``shop.templates.yaml``): mappings
    ``questions``, ``heldout_questions`` (attribute -> list of templates) and ``answers`` (attribute -> template)."""
    side = path.with_name(path.stem + ".templates.yaml")
    if not side.is_file():
        return {}
    try:
        data = yaml.safe_load(read_utf8(side, KnowledgeBaseError)) or {}
    except yaml.YAMLError as e:
        raise KnowledgeBaseError(f"{side}: not valid YAML ({str(e).splitlines()[0]})") from None
    unknown = sorted(set(data) - {"questions", "heldout_questions", "answers"}) if isinstance(data, dict) else []
    if not isinstance(data, dict) or unknown:
        raise KnowledgeBaseError(f"{side}: expected the keys questions, heldout_questions and answers")
    return data


def load_knowledge_base(path: str | Path, questions: dict[str, list[str]] | None = None,
                        heldout_questions: dict[str, list[str]] | None = None,
                        answers: dict[str, str] | None = None) -> KnowledgeBase:
    """A CSV (header row) or JSONL (one object per line) file: one entity per row, a ``name`` column, and
    attribute columns. Question templates (``{name}`` marks the entity) and answer templates (``{name}``,
    ``{value}``) per attribute come from the arguments, else from ``<stem>.templates.yaml`` beside the file;
    attributes without any get generic phrasings."""
    path = Path(path)
    if not path.is_file():
        raise KnowledgeBaseError(f"knowledge base not found: {path}")
    rows = _read_jsonl(path) if path.suffix == ".jsonl" else _read_csv(path)
    if not rows:
        raise KnowledgeBaseError(f"{path}: no entities")
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "name"]
    if not keys:
        raise KnowledgeBaseError(f"{path}: no attribute columns besides 'name'")
    side = templates_beside(path)
    questions = questions or side.get("questions") or {}
    heldout_questions = heldout_questions or side.get("heldout_questions") or {}
    answers = answers or side.get("answers") or {}
    unknown = sorted((set(questions) | set(heldout_questions) | set(answers)) - set(keys))
    if unknown:
        raise KnowledgeBaseError(f"{path}: templates for unknown attributes {unknown} (columns: {', '.join(keys)})")
    _check_templates(path, questions, heldout_questions, answers)
    attributes = {}
    for k in keys:
        base = Attribute.default(k)
        attributes[k] = Attribute(k, base.label, tuple(questions.get(k, base.questions)),
                                  tuple(heldout_questions.get(k, base.heldout_questions)), answers.get(k, base.answer))
    try:
        return KnowledgeBase(rows, attributes)
    except KnowledgeBaseError as e:
        raise KnowledgeBaseError(f"{path}: {e}") from None


def _check_templates(path: Path, questions: Any, heldout_questions: Any, answers: Any) -> None:
    """Every template a string (questions: a list of them per attribute) that fills with {name}, {Name}, {value}
    and {label} and nothing else."""
    kinds = (("questions", questions, True), ("heldout_questions", heldout_questions, True),
             ("answers", answers, False))
    for kind, mapping, listed in kinds:
        if not isinstance(mapping, dict):
            raise KnowledgeBaseError(f"{path}: {kind} must map attributes to templates")
        for attr, value in mapping.items():
            templates = value if listed else [value]
            if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
                wanted = "a list of strings" if listed else "a string"
                raise KnowledgeBaseError(f"{path}: {kind}.{attr} must be {wanted}")
            for t in templates:
                try:
                    t.format(name="x", Name="X", value="v", label="l")
                except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
                    raise KnowledgeBaseError(f"{path}: {kind}.{attr}: template {t!r} has an unknown field ({e}); "
                                             "use {name}, {Name}, {value}, {label}") from None


def _checked(row: object, where: str) -> Row:
    if not isinstance(row, dict):
        raise KnowledgeBaseError(f"{where}: expected an object of column: value")
    if not str(row.get("name") or "").strip():
        raise KnowledgeBaseError(f"{where}: missing 'name' column (every entity needs a name)")
    return {str(k): "" if v is None else str(v).strip() for k, v in row.items()}


def _read_csv(path: Path) -> list[Row]:
    reader = csv.DictReader(io.StringIO(read_utf8(path, KnowledgeBaseError), newline=""))
    try:
        if reader.fieldnames is None or "name" not in reader.fieldnames:
            raise KnowledgeBaseError(f"{path}:1: missing 'name' column (header: {', '.join(reader.fieldnames or [])})")
        return [_checked(r, f"{path}:{reader.line_num}") for r in reader]
    except csv.Error as e:  # a field over csv's size limit, a stray NUL; line_num counts the lines before it
        raise KnowledgeBaseError(f"{path}:{reader.line_num + 1}: not readable as CSV ({e})") from None


def _read_jsonl(path: Path) -> list[Row]:
    return [_checked(record, where) for where, record in jsonl_objects(path, KnowledgeBaseError)]
