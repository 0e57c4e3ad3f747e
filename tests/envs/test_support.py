"""lmpo/Support-v0: the customer's judgement, the conversation rules, the transcripts' agent mixture, the entity and
phrasing splits, a self-contained run, and the token-level Gymnasium face."""

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import lmpo  # noqa: F401  (registers lmpo/Support-v0)
from lmpo.data import Turn
from lmpo.data.matching import normalize, states_value
from lmpo.data.tokenizer import encode_prompt
from lmpo.envs.knowledge import SHOP_ATTRIBUTES, Attribute, KnowledgeBase
from lmpo.envs.support import (
    DEFLECTIONS,
    Question,
    Support,
    SupportSettings,
    answer,
    fill,
    is_lookup,
    judge,
    lookup,
)

SMALL = {"products": 60, "orders": 60, "transcripts": 200, "train_goals": 50, "eval_goals": 20}

LAMP = {"name": "Swift Cedar Lamp", "price": "$34.99", "stock": "17 units", "delivery": "3 days",
        "warranty": "2 years", "colour": "teal"}
KETTLE = {"name": "Bold Oak Kettle", "price": "$12.49", "stock": "0 units", "delivery": "5 days",
          "warranty": "1 years", "colour": "red"}
ORDER = {"name": "order 4821", "status": "shipped", "expected": "December 14", "product": "Swift Cedar Lamp"}
TINY = KnowledgeBase([LAMP, KETTLE, ORDER], SHOP_ATTRIBUTES)

PRICE = Question("Swift Cedar Lamp", "price", "How much is the Swift Cedar Lamp?")
COLOUR = Question("Swift Cedar Lamp", "colour", "What colour is the Swift Cedar Lamp?")
EXPECTED = Question("order 4821", "expected", "When will order 4821 arrive?")
PRODUCT = Question("order 4821", "product", "What product is in order 4821?")
VERBOSE = ("Thank you for waiting! I have checked our system for you, and the Swift Cedar Lamp costs $34.99. "
           "Is there anything else I can help you with today?")  # 28 words


@pytest.fixture(scope="module")
def family() -> Support:
    return Support(SupportSettings(**SMALL))


# ------------------------------------------------------------------------------------- the customer's judgement
@pytest.mark.parametrize(("question", "reply", "max_words", "expected"), [
    (PRICE, "The Swift Cedar Lamp costs $34.99.", 15, (1.0, True)),
    (PRICE, "It costs $34.99.", 3, (1.0, True)),  # exactly max_words words
    (PRICE, "It costs $34.99.", 2, (0.5, True)),  # one word too many
    (PRICE, VERBOSE, 15, (0.5, True)),
    (PRICE, VERBOSE, 28, (1.0, True)),
    (PRICE, VERBOSE, 27, (0.5, True)),
    (PRICE, "The Swift Cedar Lamp costs $43.99.", 15, (0.0, False)),  # wrong value
    (PRICE, "The Swift Cedar Lamp is a lovely lamp.", 15, (0.0, False)),  # no value
    (PRICE, "It costs 34.99 dollars.", 15, (1.0, True)),
    (PRICE, "That one is 34.99", 15, (1.0, True)),
    (COLOUR, "It is teal.", 15, (1.0, True)),
    (COLOUR, "It is red.", 15, (0.0, False)),
    (EXPECTED, "Order 4821 should arrive on December 14.", 15, (1.0, True)),
    (EXPECTED, "It should arrive on Dec 14.", 15, (1.0, True)),
    (EXPECTED, "Expected on 2026-12-14.", 15, (1.0, True)),
    (EXPECTED, "It arrives on the 14th of December.", 15, (1.0, True)),
    (EXPECTED, "It should arrive on December 15.", 15, (0.0, False)),
    (EXPECTED, "It should arrive on November 14.", 15, (0.0, False)),
    # the value of an order's product is itself an entity: naming it is not naming another entity
    (PRODUCT, "Order 4821 contains the Swift Cedar Lamp.", 15, (1.0, True)),
    (PRODUCT, "Order 4821 contains the Bold Oak Kettle.", 15, (0.0, False)),
    # the right value, but about another entity of the knowledge base
    (PRICE, "The Bold Oak Kettle costs $34.99.", 15, (0.0, False)),
    (PRICE, "The Swift Cedar Lamp costs $34.99, the Bold Oak Kettle less.", 15, (0.0, False)),
    (PRICE, "Order 4821 costs $34.99.", 15, (0.0, False)),
])
def test_judge(question: Question, reply: str, max_words: int, expected: tuple[float, bool]) -> None:
    assert judge(TINY, question, reply, max_words) == expected


@pytest.mark.parametrize(("question", "reply"), [
    (COLOUR, "teal red"),  # every colour the knowledge base has, hoping one is right
    (PRICE, "It costs $34.99 or $12.49."),
    (EXPECTED, "Order 4821 arrives on December 14 or December 15."),
    (Question("Swift Cedar Lamp", "warranty", "?"), "1 2 3 4 5 years"),
])
def test_a_list_of_values_is_not_an_answer(question: Question, reply: str) -> None:
    assert judge(TINY, question, reply, 15) == (0.0, False)
    # the same reply without the other values satisfies: the order number in a name is not a second value
    assert judge(TINY, EXPECTED, "Order 4821 arrives on December 14.", 15) == (1.0, True)


def test_judge_does_not_take_a_name_inside_the_asked_name_for_another_entity() -> None:
    # the longest name wins: "The iPhone 15 Pro costs $999." mentions the iPhone 15 Pro, not also the iPhone 15
    kb = KnowledgeBase([{"name": "iPhone 15", "price": "$799"}, {"name": "iPhone 15 Pro", "price": "$999"}],
                       {"price": SHOP_ATTRIBUTES["price"]})
    question = Question("iPhone 15 Pro", "price", "How much is the iPhone 15 Pro?")
    assert judge(kb, question, "The iPhone 15 Pro costs $999.", 15) == (1.0, True)
    assert judge(kb, question, "The iPhone 15 costs $999.", 15) == (0.0, False)

def test_lookup_reply_and_tool_turn() -> None:
    assert is_lookup("[lookup: Swift Cedar Lamp]") == "Swift Cedar Lamp"
    assert is_lookup("  [ LOOKUP :order 4821 ]") == "order 4821"
    assert is_lookup("The lamp costs $34.99.") is None
    assert is_lookup("Let me check [lookup: Swift Cedar Lamp]") is None  # only a reply that starts with it
    assert lookup(TINY, "swift cedar lamp") == Turn(
        "tool", "Swift Cedar Lamp | price: $34.99 | stock: 17 units | delivery: 3 days | warranty: 2 years | "
                "colour: teal")
    assert lookup(TINY, "4821") == Turn(
        "tool", "order 4821 | status: shipped | expected delivery: December 14 | product: Swift Cedar Lamp")
    # a query that names what it wants gets just that ("expected delivery" is not also "delivery")
    assert lookup(TINY, "price of the Swift Cedar Lamp") == Turn("tool", "Swift Cedar Lamp | price: $34.99")
    assert lookup(TINY, "expected delivery of order 4821") == Turn(
        "tool", "order 4821 | expected delivery: December 14")
    assert lookup(TINY, "order 4821 status and product") == Turn(
        "tool", "order 4821 | status: shipped | product: Swift Cedar Lamp")
    assert lookup(TINY, "colour of order 4821") == lookup(TINY, "4821")  # a field the row lacks: the whole row


def test_words_of_the_name_are_not_labels() -> None:
    kb = KnowledgeBase([{"name": "City Inn", "city": "Graz", "stars": "4"},
                        {"name": "Hotel Stars", "city": "Linz", "stars": "3"}], {
        a: Attribute.default(a) for a in ("city", "stars")})
    assert lookup(kb, "City Inn") == Turn("tool", "City Inn | city: Graz | stars: 4")  # no label asked: whole row
    assert lookup(kb, "stars of City Inn") == Turn("tool", "City Inn | stars: 4")
    assert lookup(kb, "Hotel Stars city") == Turn("tool", "Hotel Stars | city: Linz")


@pytest.mark.parametrize(("template", "concise", "verbose", "hedged"), [
    ("It costs {value}.", "It costs $3.", "and it costs $3.", "I believe it costs $3."),
    ("{Name} costs {value}.", "Order 7 costs $3.", "and order 7 costs $3.", "I believe order 7 costs $3."),
    ("{name} costs {value}.", "order 7 costs $3.", "and order 7 costs $3.", "I believe order 7 costs $3."),
    ("{value} is the price of {name}.", "Paris is the price of order 7.", "and Paris is the price",
     "I believe Paris is the price of order 7."),
])
def test_answers_keep_names_and_values_as_written(template: str, concise: str, verbose: str, hedged: str) -> None:
    attr = Attribute("price", "price", ("How much is {name}?",), (), template)
    value = "Paris" if template.startswith("{value}") else "$3"
    assert answer(attr, "order 7", value) == concise
    assert verbose in answer(attr, "order 7", value, verbose=True)
    assert answer(attr, "order 7", value, hedged=True) == hedged
    assert lookup(TINY, "purple elephant") == Turn("tool", "no match")
    assert TINY.mentioned("Order 4821 holds the Swift Cedar Lamp, not the Bold Oak Kettle.") == [
        "order 4821", "swift cedar lamp", "bold oak kettle"]


# ------------------------------------------------------------------------------------------- the conversation
def _entities(family: Support) -> tuple[dict, dict]:
    rows = family.entities["train"]
    product = next(r for r in rows if r.get("price"))
    order = next(r for r in rows if r.get("expected"))
    return product, order


def _example(product: dict, order: dict) -> dict:
    return {"questions": [
        {"entity": product["name"], "attribute": "price", "text": fill("How much is the {name}?", product["name"])},
        {"entity": product["name"], "attribute": "colour", "text": fill("What colour is the {name}?", product["name"])},
        {"entity": order["name"], "attribute": "expected", "text": fill("When will {name} arrive?", order["name"])},
    ]}


def test_conversation_lookups_and_questions(family: Support) -> None:
    product, order = _entities(family)
    example = _example(product, order)
    conv = family.conversation()
    assert conv.reset(example) == [Turn("user", example["questions"][0]["text"])]

    step = conv.step(f"[lookup: {product['name']}]")
    assert step.turns == [Turn("tool", family.kb.format_row(product))] and not step.done
    assert all(product[k] in step.turns[0].content for k in ("price", "stock", "delivery", "warranty", "colour"))
    assert step.info == {"verdict": None, "lookups": 1, "query": product["name"]}
    step = conv.step("[lookup: zebra quantum xylophone]")  # the second lookup of the turn (max_lookups=2)
    assert step.turns == [Turn("tool", "no match")] and not step.done and step.info["lookups"] == 1

    step = conv.step(f"It costs {product['price']}.")
    assert step.turns == [Turn("user", example["questions"][1]["text"])] and not step.done
    assert (step.info["verdict"], step.info["completed"], step.info["turn_lookups"], step.info["lookups"]) == \
        (1.0, 0.0, 2, 0)

    # a new turn: the lookup count starts again, so two more lookups are still lookups
    for _ in range(2):
        step = conv.step(f"[lookup: {product['name']}]")
        assert step.info["verdict"] is None and step.turns[0].role == "tool" and not step.done
    step = conv.step(f"It is {product['colour']}.")
    assert step.turns == [Turn("user", example["questions"][2]["text"])] and step.info["verdict"] == 1.0

    month, day = order["expected"].split()
    step = conv.step(f"It should arrive on {month[:3]} {day}.")
    assert step.done and step.turns == []
    assert (step.info["verdict"], step.info["correct"], step.info["completed"], step.info["turn_lookups"]) == \
        (1.0, 1.0, 1.0, 0)


def test_conversation_lookup_limit_is_judged_as_the_answer() -> None:
    family = Support(SupportSettings(**SMALL, max_lookups=1))
    product, order = _entities(family)
    conv = family.conversation()
    conv.reset(_example(product, order))
    assert conv.step(f"[lookup: {product['name']}]").turns[0].role == "tool"
    step = conv.step(f"[lookup: {product['name']}]")
    assert step.done and step.turns == []
    assert (step.info["verdict"], step.info["lookups"], step.info["completed"], step.info["turn_lookups"]) == \
        (0.0, 0, 0.0, 1)


def test_conversation_ends_when_not_satisfied(family: Support) -> None:
    product, order = _entities(family)
    wrong = family.conversation()
    wrong.reset(_example(product, order))
    step = wrong.step("It costs $100000.01.")
    assert step.done and step.turns == [] and (step.info["verdict"], step.info["completed"]) == (0.0, 0.0)
    neutral = family.conversation()  # correct but long: neutral, and the customer leaves
    neutral.reset(_example(product, order))
    step = neutral.step(f"It costs {product['price']}, " + "and that is a very fair price indeed " * 3)
    assert step.done and (step.info["verdict"], step.info["correct"], step.info["completed"]) == (0.5, 1.0, 0.0)
    single = family.conversation()  # a one-question goal completed by its first answer
    single.reset({"questions": _example(product, order)["questions"][2:]})
    step = single.step(f"{order['name']} should arrive on {order['expected']}.")
    assert step.done and (step.info["verdict"], step.info["completed"]) == (1.0, 1.0)


def test_tool(family: Support) -> None:
    product, _ = _entities(family)
    turn = family.tool(f"[lookup: {product['name']}]")
    assert turn == Turn("tool", family.kb.format_row(product))
    assert family.tool("[lookup: zebra quantum xylophone]") == Turn("tool", "no match")
    assert family.tool(f"It costs {product['price']}.") is None


# ------------------------------------------------------------------------------------------- the transcripts
def _agent(dialogue) -> str:
    """The style of agent that wrote a transcript, read from its replies."""
    replies = [t.content for t in dialogue if t.role == "assistant"]
    if replies[0] in DEFLECTIONS:
        assert all(r in DEFLECTIONS for r in replies)
        return "deflect"
    if is_lookup(replies[0]) is None:
        assert not any(is_lookup(r) is not None for r in replies) and all(t.role != "tool" for t in dialogue)
        return "memory"
    answers = [r for r in replies if is_lookup(r) is None]
    verbose = ["Is there anything else" in a for a in answers]
    assert len(set(verbose)) == 1 and len(answers) * 2 == len(replies)
    return "lookup_verbose" if verbose[0] else "lookup_concise"


def _answers(family: Support, dialogue) -> list[tuple[Question, str]]:
    """Each (question, answer) of a transcript, the question found by re-filling the templates."""
    asked = {fill(t, r["name"]): (r["name"], a) for r in family.kb.rows for a in family.kb.askable(r)
             for t in family.kb.attributes[a].questions}
    out = []
    for i, turn in enumerate(dialogue):
        if turn.role == "user":
            reply = next(t.content for t in dialogue[i + 1:] if t.role == "assistant" and is_lookup(t.content) is None)
            out.append((Question(*asked[turn.content], turn.content), reply))
    return out


def test_transcript_mixture_matches_the_shares() -> None:
    shares = {"memory": 0.5, "lookup_concise": 0.25, "lookup_verbose": 0.25}
    family = Support(SupportSettings(**{**SMALL, "transcripts": 400}, agents=shares))
    dialogues = family.pretraining("train")
    assert len(dialogues) == 400
    agents = [_agent(d) for d in dialogues]
    for name, share in shares.items():
        assert abs(agents.count(name) / 400 - share) <= 0.07, (name, agents.count(name))
    assert "deflect" not in agents
    for d, agent in zip(dialogues, agents):
        for q, reply in _answers(family, d):
            if agent == "lookup_concise":
                assert judge(family.kb, q, reply, family.settings.max_words) == (1.0, True), reply
            elif agent == "lookup_verbose":
                assert judge(family.kb, q, reply, family.settings.max_words) == (0.5, True), reply


def test_deflect_only_transcripts_never_look_up() -> None:
    family = Support(SupportSettings(**SMALL, agents={"deflect": 1.0}))
    dialogues = family.pretraining("train")
    assert {_agent(d) for d in dialogues} == {"deflect"}
    assert not any(t.role == "tool" or is_lookup(t.content) is not None for d in dialogues for t in d)


@pytest.mark.parametrize(("stale_share", "verdict"), [(1.0, (0.0, False)), (0.0, (1.0, True))])
def test_memory_answers_quote_the_stale_knowledge_base(stale_share: float, verdict: tuple[float, bool]) -> None:
    family = Support(SupportSettings(**SMALL, agents={"memory": 1.0}, stale_share=stale_share))
    pairs = [p for d in family.pretraining("train") for p in _answers(family, d)]
    assert len(pairs) >= 200
    for q, reply in pairs:
        if q.attribute == "product":  # an order's product never changes
            continue
        assert reply.startswith("I believe "), reply  # an agent who has not checked says so
        assert judge(family.kb, q, reply, 1000) == verdict, reply
        assert states_value(reply, family.kb.get(q.entity)[q.attribute]) == verdict[1], reply


@pytest.mark.parametrize("versions", [1, 8])
def test_memory_agents_learnt_the_catalogue_at_different_times(versions: int) -> None:
    # one old version: every agent quotes the same old value of an entity's attribute (a value to memorise);
    # several: agents disagree, and only a lookup tells the value
    family = Support(SupportSettings(**{**SMALL, "transcripts": 600}, agents={"memory": 1.0}, stale_share=1.0,
                                     stale_versions=versions))
    quoted: dict[tuple[str, str], set[str]] = {}
    for d in family.pretraining("train"):
        for q, reply in _answers(family, d):
            if q.attribute != "product":  # an order's product never changes
                quoted.setdefault((q.entity, q.attribute), set()).add(reply)
    disagree = sum(len(replies) > 1 for replies in quoted.values())
    assert len(quoted) >= 100
    assert disagree == 0 if versions == 1 else disagree >= len(quoted) // 4, (disagree, len(quoted))


# --------------------------------------------------------------------------------------------------- goals
def test_goals_use_their_entities_and_phrasings(family: Support) -> None:
    names = {split: {r["name"] for r in rows} for split, rows in family.entities.items()}
    assert all(names.values())
    assert not (names["transcripts"] & names["train"] or names["transcripts"] & names["heldout"]
                or names["train"] & names["heldout"])
    assert len(family.kb.rows) == sum(len(n) for n in names.values())
    kb = family.kb
    expected = {"train": (50, "train", "questions"), "heldout": (20, "heldout", "questions"),
                "heldout_phrasings": (20, "heldout", "heldout_questions")}
    for split, (n, entities, templates) in expected.items():
        goals = family.examples(split)
        assert len(goals) == n
        sizes = set()
        for goal in goals:
            qs = goal["questions"]
            sizes.add(len(qs))
            assert 1 <= len(qs) <= family.settings.max_questions
            assert len({q["entity"] for q in qs}) <= 2
            assert len({(q["entity"], q["attribute"]) for q in qs}) == len(qs)
            for q in qs:
                assert q["entity"] in names[entities]
                assert kb.get(q["entity"])[q["attribute"]]
                phrasings = getattr(kb.attributes[q["attribute"]], templates)
                assert q["text"] in {fill(t, q["entity"]) for t in phrasings}, (split, q)
        assert sizes == {1, 2, 3} or split != "train"
    with pytest.raises(KeyError):
        family.examples("test")


def test_transcripts_never_mention_rl_or_heldout_entities(family: Support) -> None:
    # an order goes to its product's side of the split, so a transcript about an order never names a product
    # that RL or evaluation asks about
    hidden = {" ".join(normalize(r["name"])) for split in ("train", "heldout") for r in family.entities[split]}
    leaks = []
    for d in family.pretraining("train"):
        for t in d:
            text = " " + " ".join(normalize(t.content)) + " "
            leaks += [(name, t.content) for name in hidden if f" {name} " in text]
    assert leaks == []


# ------------------------------------------------------------------------------------------ a self-contained run
def test_saved_knowledge_base_wins_over_the_settings(family: Support, tmp_path) -> None:
    family.save(tmp_path)
    other = tmp_path / "other.csv"
    other.write_text("name,colour\nRed Mug,red\nBlue Cup,blue\nGreen Jar,green\nGrey Pot,grey\n")
    assert len(Support(SupportSettings(**SMALL, knowledge_base=str(other))).kb.rows) == 4
    again = Support(SupportSettings(**SMALL, knowledge_base=str(other)), run_dir=tmp_path)
    assert again.kb.rows == family.kb.rows
    assert again.kb.attributes == family.kb.attributes
    assert again.examples("heldout") == family.examples("heldout")


# --------------------------------------------------------------------------------------------- Gymnasium
def _say(env, text: str) -> tuple:
    ids = env.tokenizer.encode(text, add_special_tokens=False) + [env.eos_id]
    for t in ids[:-1]:
        _, reward, terminated, truncated, info = env.step(t)
        assert (reward, terminated, truncated, info) == (0.0, False, False, {})
    return env.step(ids[-1])


def test_gymnasium_face() -> None:
    env = gym.make("lmpo/Support-v0", products=60, orders=60, transcripts=100, train_goals=20, eval_goals=5)
    check_env(env.unwrapped)
    env = env.unwrapped
    obs, info = env.reset(seed=0, options={"index": 0})
    q = env.data[0]["questions"][0]
    row, attr = env.family.kb.get(q["entity"]), env.family.kb.attributes[q["attribute"]]
    assert info == {"turns": [q["text"]]}

    reply = f"[lookup: {row['name']}]"
    obs, reward, terminated, truncated, info = _say(env, reply)
    assert (reward, terminated, truncated) == (-0.05, False, False)
    assert info["reply"] == reply and info["lookups"] == 1 and info["verdict"] is None
    tool = Turn("tool", env.family.kb.format_row(row))
    prompt = encode_prompt(env.tokenizer, [Turn("user", q["text"]), Turn("assistant", reply), tool])
    assert obs[: len(prompt)].tolist() == prompt and (obs[len(prompt):] == env.pad_id).all()
    tool_ids = env.tokenizer.encode(tool.content, add_special_tokens=False)
    start = len(prompt) - len(tool_ids) - 2  # ... <|tool|> row <eos> <|assistant|>
    assert obs[start - 1] == env.tokenizer.convert_tokens_to_ids("<|tool|>")
    assert obs[start: start + len(tool_ids)].tolist() == tool_ids

    answer = fill(attr.answer, row["name"], row[attr.key])
    obs, reward, terminated, truncated, info = _say(env, answer)
    assert info["reply"] == answer and info["verdict"] == 1.0
    assert reward == 1.0 and terminated == (len(env.data[0]["questions"]) == 1) and not truncated
