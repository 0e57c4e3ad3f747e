"""``lmpo/Support-v0``: a customer-support desk over a knowledge base, with a lookup tool.

A simulated customer has a goal of 1 to ``max_questions`` questions about one or two entities (products, orders),
asked one at a time in phrasings from templates. It judges each answer: satisfied (1.0) when the value asked is
stated correctly and the answer has at most ``max_words`` words; neutral (0.5) when correct but longer; unsatisfied
(0.0) when the value is wrong or missing, or the answer names another entity. It asks its next question while
satisfied and leaves after its last one or when not satisfied. The bot may write ``[lookup: <query>]``: the
conversation then adds a tool turn with the best-matching row (or "no match") and the bot goes on with its turn.

The historical transcripts a model is pre-trained on are generated on entities of their own by a mixture of agents:
some look the fact up and answer briefly; some answer from memory, quoting an older version of the knowledge base;
some look up and answer at length; some deflect. RL on other entities learns which of these works, and evaluation
asks about entities (and in phrasings) that neither pre-training nor RL saw.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from lmpo.data.corpus import Dialogue, Turn, read_utf8
from lmpo.data.matching import as_date, dates_in, numbers_in, states_value, word_count
from lmpo.data.tokenizer import train_tokenizer
from lmpo.envs.knowledge import Attribute, KnowledgeBase, KnowledgeBaseError, Row, load_knowledge_base, shop
from lmpo.envs.text import EnvSettings, Example, TextStep, TokenTextEnv

LOOKUP = re.compile(r"^\s*\[\s*lookup\s*:\s*([^\]]*)\]?", re.IGNORECASE)
SPLITS = ("transcripts", "train", "heldout")  # entity sets: pre-training, RL, evaluation only
AGENTS = ("lookup_concise", "memory", "lookup_verbose", "deflect")
DEFLECTIONS = ("I'm sorry, I can't check that right now. Please look on our website.",
               "Let me pass you to a colleague who handles that, please hold.",
               "I don't have that information at hand, sorry about that.")
SAVED_KB = "knowledge_base.json"


class SupportSettings(EnvSettings):
    knowledge_base: str | None = Field(None, description="CSV or JSONL file of entities (a 'name' column and "
                                       "attribute columns); None: lmpo's own fictional shop.")
    questions: dict[str, list[str]] = Field(default_factory=dict, description="Question templates per attribute "
                                            "({name} marks the entity); attributes without them get generic ones.")
    heldout_questions: dict[str, list[str]] = Field(default_factory=dict, description="Phrasings per attribute kept "
                                                    "for evaluation (the held-out-phrasing split).")
    answers: dict[str, str] = Field(default_factory=dict, description="The transcripts' concise answer per attribute "
                                    "({name}, {Name}, {value}, {label}).")
    products: int = Field(600, ge=1, le=14_400, description="lmpo's shop: products.")
    orders: int = Field(600, ge=0, le=9_000, description="lmpo's shop: orders.")
    entity_split: list[Annotated[float, Field(gt=0)]] = Field([0.5, 0.25, 0.25], min_length=3, max_length=3,
                                      description="Shares of entities for transcripts, RL and held-out evaluation.")
    max_questions: int = Field(3, ge=1, description="Most questions in a customer's goal (1 to this many).")
    max_words: int = Field(15, ge=1, description="Longest answer (words) the customer is satisfied with.")
    max_lookups: int = Field(2, ge=0, description="Lookups per turn; one more is judged as the answer.")
    lookup_results: int = Field(1, ge=1, description="Rows a lookup returns.")
    transcripts: int = Field(2000, ge=1, description="Historical transcripts generated for pre-training.")
    agents: dict[str, float] = Field(
        default_factory=lambda: {"memory": 0.45, "lookup_concise": 0.3, "lookup_verbose": 0.1, "deflect": 0.15},
        description="Shares of agent styles in the transcripts: lookup_concise, memory (answers from a stale "
        "knowledge base), lookup_verbose, deflect.")
    stale_share: float = Field(0.8, ge=0, le=1, description="Share of values that changed since the agents "
                               "answering from memory learnt them.")
    stale_versions: int = Field(8, ge=1, le=1024, description="Older versions of the knowledge base that agents "
                                "answering from memory learnt (each transcript's agent, one of them): agents "
                                "disagree, as people who learnt a catalogue at different times do.")
    train_goals: int = Field(2000, ge=1, description="Customer goals on RL entities.")
    eval_goals: int = Field(200, ge=1, description="Customer goals per evaluation split.")

    @field_validator("agents")
    @classmethod
    def _agents(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(AGENTS))
        if unknown:
            raise ValueError(f"unknown agent styles {unknown} (choose from {', '.join(AGENTS)})")
        if any(s < 0 for s in v.values()) or sum(v.values()) <= 0:
            raise ValueError("agent shares must be >= 0 with a positive sum")
        return v


def fill(template: str, name: str, value: str = "", label: str = "") -> str:
    """A question or answer template with its entity (``{Name}``: capitalised at a sentence's start)."""
    return template.format(name=name, Name=name[:1].upper() + name[1:], value=value, label=label)


@dataclass(frozen=True)
class Question:
    """One question of a customer's goal."""

    entity: str
    attribute: str
    text: str


def is_lookup(reply: str) -> str | None:
    """The query of a ``[lookup: <query>]`` reply, else None."""
    m = LOOKUP.match(reply)
    return m.group(1).strip() if m else None


def lookup(kb: KnowledgeBase, query: str, k: int = 1) -> Turn:
    """The tool's turn: the ``k`` best-matching rows, or "no match"."""
    rows = kb.lookup(query, k)
    return Turn("tool", " || ".join(kb.format_row(r, kb.fields_in(query, r["name"])) for r in rows) if rows
                else "no match")


def states_only(kb: KnowledgeBase, reply: str, entity: str, attribute: str, value: str) -> bool:
    """Whether ``reply`` states ``value`` and no other value of ``attribute``: a list of every colour, or of the
    numbers 1 to 14, is not an answer. Numbers in the entity's name ("order 4821") do not count."""
    if not states_value(reply, value):
        return False
    date = as_date(value)
    if date is not None:
        return dates_in(reply) == {date}
    wanted = numbers_in(value)
    if wanted:
        return set(numbers_in(reply)) - set(numbers_in(entity)) == set(wanted)
    return not any(states_value(reply, other) for other in kb.values(attribute) if other != value
                   and not states_value(value, other))


def judge(kb: KnowledgeBase, question: Question, reply: str, max_words: int) -> tuple[float, bool]:
    """The customer's verdict on ``reply`` to ``question`` (1.0, 0.5, 0.0) and whether the value was correct."""
    row = kb.get(question.entity)
    assert row is not None
    value = row[question.attribute]
    others = set(kb.mentioned(reply)) - {kb.key(question.entity), kb.key(value)}
    correct = not others and states_only(kb, reply, question.entity, question.attribute, value)
    if not correct:
        return 0.0, False
    return (1.0 if word_count(reply) <= max_words else 0.5), True


@dataclass
class SupportConversation:
    """One customer at the desk."""

    kb: KnowledgeBase
    settings: SupportSettings
    goal: list[Question] = field(default_factory=list)
    asked: int = 0  # questions asked so far
    lookups: int = 0  # lookups in the current turn

    def reset(self, example: Example) -> list[Turn]:
        """The customer's first question."""
        self.goal = [Question(**q) for q in example["questions"]]
        self.asked, self.lookups = 1, 0
        return [Turn("user", self.goal[0].text)]

    def step(self, reply: str) -> TextStep:
        """A lookup gets the tool's answer; anything else is judged as the answer to the current question."""
        query = is_lookup(reply)
        if query is not None and self.lookups < self.settings.max_lookups:
            self.lookups += 1
            return TextStep([lookup(self.kb, query, self.settings.lookup_results)], False,
                            {"verdict": None, "lookups": 1, "query": query})
        question = self.goal[self.asked - 1]
        verdict, correct = judge(self.kb, question, reply, self.settings.max_words)
        last = self.asked == len(self.goal)
        info = {"verdict": verdict, "lookups": 0, "correct": float(correct), "words": word_count(reply),
                "turn_lookups": self.lookups, "completed": float(verdict == 1.0 and last)}
        if verdict < 1.0 or last:
            return TextStep([], True, info)
        self.asked, self.lookups = self.asked + 1, 0
        return TextStep([Turn("user", self.goal[self.asked - 1].text)], False, info)


class Support:
    """The support desk: knowledge base, entity splits, customers' goals, historical transcripts."""

    Settings: ClassVar[type[EnvSettings]] = SupportSettings
    eval_splits: ClassVar[tuple[str, ...]] = ("train", "heldout", "heldout_phrasings")
    default_rewards: ClassVar[tuple[dict[str, Any], ...]] = ({"name": "satisfaction"},
                                                             {"name": "lookup_cost", "cost": 0.05})
    tool_call_start: ClassVar[str | None] = "["  # every lookup starts "[lookup:" (after spaces)

    def __init__(self, settings: Any, seed: int = 0, run_dir: Path | None = None) -> None:
        self.settings: SupportSettings = settings
        saved = run_dir / SAVED_KB if run_dir is not None else None
        self.kb = load_saved(saved) if saved is not None and saved.is_file() else self._knowledge_base()
        self.seed = seed
        # a row with no value has nothing to ask about
        sets = [[r for r in rows if self.kb.askable(r)] for rows in self.kb.split(settings.entity_split)]
        self.entities = dict(zip(SPLITS, sets, strict=True))
        for split, rows in self.entities.items():
            if not rows:
                raise KnowledgeBaseError(f"no {split} entities: the knowledge base has {len(self.kb.rows)} rows "
                                         "(env.kwargs.entity_split gives each set a share)")
        self._examples: dict[str, list[Example]] = {}
        self._dialogues: dict[str, list[Dialogue]] = {}

    def _knowledge_base(self) -> KnowledgeBase:
        s = self.settings
        if s.knowledge_base is None:
            return shop(s.products, s.orders)
        return load_knowledge_base(s.knowledge_base, s.questions, s.heldout_questions, s.answers)

    # ------------------------------------------------------------------------------------------- goals
    def goals(self, rows: list[Row], n: int, heldout_phrasing: bool, seed: int) -> list[Example]:
        """``n`` customer goals: 1 to ``max_questions`` questions about one or two of ``rows``."""
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            entities = [rows[int(i)] for i in rng.choice(len(rows), size=min(len(rows), 2), replace=False)]
            n_q = int(rng.integers(1, self.settings.max_questions + 1))
            pairs = [(e, a) for e in entities[: 1 + int(n_q > 1 and rng.random() < 0.5)] for a in self.kb.askable(e)]
            chosen = [pairs[int(i)] for i in rng.choice(len(pairs), size=min(n_q, len(pairs)), replace=False)]
            questions = []
            for e, a in chosen:
                attr = self.kb.attributes[a]
                templates = attr.heldout_questions if heldout_phrasing and attr.heldout_questions else attr.questions
                # one draw whatever the number of templates: the held-out phrasings ask the very goals of "heldout"
                template = templates[int(rng.random() * len(templates))]
                questions.append({"entity": e["name"], "attribute": a, "text": fill(template, e["name"])})
            out.append({"questions": questions})
        return out

    def examples(self, split: str) -> list[Example]:
        """Goals on RL entities ("train"), held-out entities ("heldout"), and held-out entities asked in held-out
        phrasings ("heldout_phrasings")."""
        if split not in self._examples:
            s = self.settings
            if split == "train":
                self._examples[split] = self.goals(self.entities["train"], s.train_goals, False, self.seed + 1)
            elif split in ("heldout", "heldout_phrasings"):
                self._examples[split] = self.goals(self.entities["heldout"], s.eval_goals, split != "heldout",
                                                   self.seed + 2)
            else:
                raise KeyError(f"Support-v0 has no split {split!r} (train, heldout, heldout_phrasings)")
        return self._examples[split]

    # ------------------------------------------------------------------------------------ transcripts
    def transcript(self, goal: Example, agent: str, stale: KnowledgeBase, rng: np.random.Generator) -> Dialogue:
        """One historical conversation answered by an agent of the given style."""
        turns: list[Turn] = []
        for q in goal["questions"]:
            row, attr = self.kb.get(q["entity"]), self.kb.attributes[q["attribute"]]
            assert row is not None
            turns.append(Turn("user", q["text"]))
            if agent == "deflect":
                turns.append(Turn("assistant", str(rng.choice(DEFLECTIONS))))
                continue
            if agent != "memory":
                turns.append(Turn("assistant", f"[lookup: {attr.label} of {row['name']}]"))
                turns.append(Turn("tool", self.kb.format_row(row, [attr.key])))  # the row asked about, always
            known = row if agent != "memory" else stale.get(row["name"])
            assert known is not None
            verbose = agent == "lookup_verbose"
            turns.append(Turn("assistant", answer(attr, row["name"], known[attr.key], verbose=verbose,
                                                  hedged=agent == "memory")))
        return tuple(turns)

    def pretraining(self, split: str) -> list[Dialogue]:
        """Historical transcripts on the transcript entities ("train"), or on held-out ones (perplexity)."""
        if split not in self._dialogues:
            s = self.settings
            held = split == "heldout"
            rows = self.entities["heldout" if held else "transcripts"]
            n = max(1, s.transcripts // 10) if held else s.transcripts
            seed = self.seed + (4 if held else 3)
            rng = np.random.default_rng(seed)
            names = sorted(s.agents)
            shares = np.array([s.agents[a] for a in names]) / sum(s.agents.values())
            # each transcript's agent remembers one old catalogue (one catalogue draws nothing from rng, so
            # stale_versions=1 gives the transcripts of earlier lmpo versions)
            stales = [self.kb.stale(s.stale_share, seed + 100 * k) for k in range(s.stale_versions)]
            self._dialogues[split] = [self.transcript(g, names[int(rng.choice(len(names), p=shares))],
                                                      stales[int(rng.integers(len(stales)))] if len(stales) > 1
                                                      else stales[0], rng)
                                      for g in self.goals(rows, n, False, seed)]
        return self._dialogues[split]

    def tokenizer_texts(self) -> list[str]:
        """The transcripts' turns."""
        return [t.content for d in self.pretraining("train") for t in d]

    def conversation(self) -> SupportConversation:
        """A new customer."""
        return SupportConversation(self.kb, self.settings)

    def tool(self, reply: str) -> Turn | None:
        """The lookup tool's answer to a ``[lookup: ...]`` reply."""
        query = is_lookup(reply)
        return None if query is None else lookup(self.kb, query, self.settings.lookup_results)

    def save(self, run_dir: Path) -> None:
        """The knowledge base (rows and question templates) as ``knowledge_base.json`` in the run."""
        data = {"rows": self.kb.rows, "attributes": [a.__dict__ for a in self.kb.attributes.values()]}
        (run_dir / SAVED_KB).write_text(json.dumps(data, indent=1))


def answer(attr: Attribute, name: str, value: str, verbose: bool = False, hedged: bool = False) -> str:
    """The transcripts' concise answer; the long-winded one that says the same; or the hedged one of an agent who
    answers from memory ("I believe it costs $34.99."), as people who have not checked say."""
    text = fill(attr.answer, name, value, attr.label)
    # inside a sentence: the name as written, and a first letter lower-cased only where the template has one
    template = "{name}" + attr.answer.removeprefix("{Name}") if attr.answer.startswith("{Name}") else attr.answer
    inner = fill(template, name, value, attr.label)
    inner = inner[:1].lower() + inner[1:] if template[:1].isalpha() else inner
    if hedged:  # a guess is a guess, however long-winded
        return f"I believe {inner}"
    if not verbose:
        return text
    return f"Thank you for waiting! I have checked our system for you, and {inner} Is there anything else I can " \
           "help you with today?"


def load_saved(path: Path) -> KnowledgeBase:
    """A knowledge base stored in a run by ``Support.save``."""
    try:
        data = json.loads(read_utf8(path, KnowledgeBaseError))
        attributes = {a["key"]: Attribute(a["key"], a["label"], tuple(a["questions"]), tuple(a["heldout_questions"]),
                                          a["answer"]) for a in data["attributes"]}
        return KnowledgeBase(data["rows"], attributes)
    except (json.JSONDecodeError, KeyError, TypeError) as e:  # the run's copy was edited or truncated
        raise KnowledgeBaseError(f"{path} is damaged ({type(e).__name__}: {e})") from None


class SupportEnv(TokenTextEnv):
    """The Gymnasium face: one token per step; a reply's reward is the customer's verdict minus ``lookup_cost`` per
    lookup. Keyword arguments are ``SupportSettings``."""

    def __init__(self, tokenizer: Any = None, split: str = "train", max_reply_tokens: int = 48, max_len: int = 512,
                 lookup_cost: float = 0.05, vocab_size: int = 2048, **settings: Any) -> None:
        family = Support(SupportSettings(**settings))
        tokenizer = tokenizer or train_tokenizer(family.tokenizer_texts(), vocab_size)
        super().__init__(family, tokenizer, lambda i: float(i.get("verdict") or 0.0) - lookup_cost * i["lookups"],
                         split, max_reply_tokens, max_len)
