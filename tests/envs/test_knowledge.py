"""Knowledge bases of lmpo/Support-v0: the shop, entity splits, the lookup tool, stale copies, users' files."""

import json
import math
import re

import pytest

from lmpo.data.matching import as_date
from lmpo.envs.knowledge import (
    SHOP_ATTRIBUTES,
    Attribute,
    KnowledgeBase,
    KnowledgeBaseError,
    load_knowledge_base,
    shop,
)

PRODUCT_KEYS = ("price", "stock", "delivery", "warranty", "colour")
ORDER_KEYS = ("status", "expected", "product")
DATE = re.compile(r"^(January|February|March|April|May|June|July|August|September|October|November|December) "
                  r"([1-9]|1\d|2[0-8])$")


@pytest.fixture(scope="module")
def small_shop() -> KnowledgeBase:
    return shop(products=60, orders=60)


# ----------------------------------------------------------------------------------------------- shop()
def test_shop_is_deterministic_per_seed() -> None:
    assert shop(products=60, orders=60, seed=0).rows == shop(products=60, orders=60, seed=0).rows
    other = shop(products=60, orders=60, seed=1).rows
    assert other != shop(products=60, orders=60, seed=0).rows
    # not only the order of the rows: the products themselves differ
    assert {r["name"] for r in other} != {r["name"] for r in shop(products=60, orders=60, seed=0).rows}


def test_shop_counts_names_and_fields(small_shop: KnowledgeBase) -> None:
    products = [r for r in small_shop.rows if not r["name"].startswith("order ")]
    orders = [r for r in small_shop.rows if r["name"].startswith("order ")]
    assert (len(products), len(orders), len(small_shop.rows)) == (60, 60, 120)
    assert len({KnowledgeBase.key(r["name"]) for r in small_shop.rows}) == 120
    for r in products:
        assert len(r["name"].split()) == 3
        assert re.fullmatch(r"\$\d+\.(99|49|00)", r["price"]), r
        assert re.fullmatch(r"\d+ units", r["stock"]), r
        assert re.fullmatch(r"([1-9]|1[0-4]) days", r["delivery"]), r
        assert re.fullmatch(r"[1-5] years", r["warranty"]), r
        assert r["colour"].isalpha() and r["colour"].islower(), r
        assert not any(r.get(k) for k in ORDER_KEYS)
        assert small_shop.askable(r) == list(PRODUCT_KEYS)
    for r in orders:
        assert re.fullmatch(r"order \d{4}", r["name"]), r
        assert r["status"] in ("processing", "shipped", "delivered", "cancelled", "returned")
        assert DATE.fullmatch(r["expected"]), r
        named = small_shop.get(r["product"])
        assert named is not None and named["price"], r  # an existing product
        assert small_shop.askable(r) == list(ORDER_KEYS)
    assert len(shop(products=7, orders=3).rows) == 10
    assert len(shop(products=5, orders=0).rows) == 5


def test_shop_refuses_more_products_than_names() -> None:
    with pytest.raises(ValueError, match="at most"):
        shop(products=24 * 20 * 30 + 1, orders=0)


# ---------------------------------------------------------------------------------------------- split()
def test_split_disjoint_covering_proportional_and_stable() -> None:
    kb = shop(products=600, orders=600)
    parts = kb.split([0.5, 0.25, 0.25])
    names = [{r["name"] for r in p} for p in parts]
    assert sum(len(p) for p in parts) == 1200
    assert set().union(*names) == {r["name"] for r in kb.rows}
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    for part, share in zip(parts, (0.5, 0.25, 0.25)):
        assert abs(len(part) / 1200 - share) <= 0.05
    # the shares are normalised: [2, 1, 1] is the same split
    assert [[r["name"] for r in p] for p in kb.split([2, 1, 1])] == [[r["name"] for r in p] for p in parts]
    # an entity's side is a property of its name: removing every other row moves nobody
    side = {r["name"]: i for i, p in enumerate(parts) for r in p}
    kept = [r for r in kb.rows[::2] if "product" not in r]
    kept_names = {r["name"] for r in kept}
    kept += [r for r in kb.rows[::2] if r.get("product") in kept_names]  # orders go with their product
    fewer = KnowledgeBase(kept, kb.attributes).split([0.5, 0.25, 0.25])
    assert sum(len(p) for p in fewer) == len(kept) > 300
    for i, p in enumerate(fewer):
        assert all(side[r["name"]] == i for r in p)
    # another salt is another split
    assert kb.split([0.5, 0.25, 0.25], salt="other") != parts


# --------------------------------------------------------------------------------------------- lookup()
def test_lookup_by_name_order_number_and_nothing(small_shop: KnowledgeBase) -> None:
    product = small_shop.rows[3]
    assert small_shop.lookup(product["name"])[0] is product
    assert small_shop.lookup(product["name"].upper() + "?!")[0] is product  # normalised
    order = small_shop.rows[60 + 7]
    number = order["name"].split()[1]
    assert re.fullmatch(r"\d{4}", number)
    assert small_shop.lookup(number) == [order]
    assert small_shop.lookup(f"where is my order #{number} please") == [order]
    assert small_shop.lookup("zebra quantum xylophone") == []
    assert small_shop.lookup("") == []
    other = small_shop.rows[10]
    two = small_shop.lookup(f"{product['name']} and {other['name']}", k=2)
    assert len(two) == 2 and {r["name"] for r in two} == {product["name"], other["name"]}


def test_lookup_scores_by_idf_weighted_share_of_the_name() -> None:
    # hand-computed: 4 rows; "red" and "mug" in 2 names each -> idf ln(1 + 4/2) = ln 3; "blue", "cup", "order",
    # "4821" in 1 name each -> ln 5
    rows = [{"name": "Red Mug", "colour": "red"}, {"name": "Blue Mug", "colour": "blue"},
            {"name": "Red Cup", "colour": "red"}, {"name": "order 4821", "colour": "grey"}]
    kb = KnowledgeBase(rows, {"colour": Attribute.default("colour")})
    assert kb._idf["red"] == pytest.approx(math.log(3)) and kb._idf["blue"] == pytest.approx(math.log(5))
    # "mug": Red Mug ln3 / 2ln3 = 0.5 (meets the threshold); Blue Mug ln3 / (ln3 + ln5) = 0.406 (does not)
    assert [r["name"] for r in kb.lookup("mug", k=4)] == ["Red Mug"]
    # "blue": Blue Mug ln5 / (ln5 + ln3) = 0.594
    assert [r["name"] for r in kb.lookup("blue", k=4)] == ["Blue Mug"]
    # "red mug cup": Red Mug 1.0, Red Cup 1.0 (ties by name), Blue Mug 0.406
    assert [r["name"] for r in kb.lookup("red mug cup", k=4)] == ["Red Cup", "Red Mug"]
    assert [r["name"] for r in kb.lookup("red mug cup", k=4, threshold=0.4)] == ["Red Cup", "Red Mug", "Blue Mug"]
    assert kb.lookup("4821") == [rows[3]]
    assert kb.format_row(rows[0]) == "Red Mug | colour: red"


# ---------------------------------------------------------------------------------------------- stale()
def test_stale_changes_the_share_of_values_asked(small_shop: KnowledgeBase) -> None:
    assert small_shop.stale(0.0).rows == small_shop.rows
    old = small_shop.stale(1.0, seed=3)
    assert [r["name"] for r in old.rows] == [r["name"] for r in small_shop.rows]
    colours = {r["colour"] for r in small_shop.rows if r.get("colour")}
    for new, was in zip(small_shop.rows, old.rows):
        for k in small_shop.askable(new):
            if k == "product":  # a value that names an entity never changes
                assert was[k] == new[k]
                continue
            assert was[k] != new[k], (new["name"], k)
        if new.get("price"):
            assert re.fullmatch(r"\$\d+\.\d\d", was["price"])
            assert re.fullmatch(r"\d+ units", was["stock"]) and was["colour"] in colours
        else:
            assert as_date(was["expected"]) is not None and was["expected"].split()[0] == new["expected"].split()[0]
            assert was["status"] in ("processing", "shipped", "delivered", "cancelled", "returned")
            assert small_shop.get(was["product"]) is not None
    half = small_shop.stale(0.5, seed=3)
    changed = sum(a[k] != b[k] for a, b in zip(small_shop.rows, half.rows) for k in small_shop.askable(a))
    total = sum(len(small_shop.askable(r)) for r in small_shop.rows)  # 60 * 5 + 60 * 3 = 480
    assert total == 480 and abs(changed / total - 0.5) < 0.1


# ------------------------------------------------------------------------------------ load_knowledge_base
CSV = "name,colour,delivery_time\nRed Mug, red ,3 days\nBlue Cup,blue,\n"
GENERIC = {
    "colour": (("What is the colour of {name}?", "Tell me the colour of {name}.", "What's the colour for {name}?"),
               ("Could you tell me the colour of {name}?",)),
    "delivery_time": (("What is the delivery time of {name}?", "Tell me the delivery time of {name}.",
                       "What's the delivery time for {name}?"), ("Could you tell me the delivery time of {name}?",)),
}


def _check_loaded(kb: KnowledgeBase) -> None:
    assert [r["name"] for r in kb.rows] == ["Red Mug", "Blue Cup"]
    assert kb.get("red mug")["colour"] == "red"  # surrounding space stripped
    assert kb.get("Red Mug")["delivery_time"] == "3 days"
    assert kb.askable(kb.get("Blue Cup")) == ["colour"]  # an empty value does not apply
    assert list(kb.attributes) == ["colour", "delivery_time"]
    for key, (questions, heldout) in GENERIC.items():
        a = kb.attributes[key]
        assert (a.questions, a.heldout_questions) == (questions, heldout)
        assert a.label == key.replace("_", " ")
    assert kb.format_row(kb.get("Red Mug")) == "Red Mug | colour: red | delivery time: 3 days"


def test_load_csv_with_generic_questions(tmp_path) -> None:
    path = tmp_path / "kb.csv"
    path.write_text(CSV)
    _check_loaded(load_knowledge_base(path))


def test_load_jsonl_equivalent(tmp_path) -> None:
    path = tmp_path / "kb.jsonl"
    path.write_text(json.dumps({"name": "Red Mug", "colour": " red ", "delivery_time": "3 days"}) + "\n\n"
                    + json.dumps({"name": "Blue Cup", "colour": "blue", "delivery_time": None}) + "\n")
    _check_loaded(load_knowledge_base(path))


def test_load_with_own_templates_for_known_attributes(tmp_path) -> None:
    # every kind of template is checked against the columns (once only the answers' were)
    path = tmp_path / "kb.csv"
    path.write_text(CSV)
    kb = load_knowledge_base(path, questions={"colour": ["Which colour is {name}?"]},
                             heldout_questions={"colour": ["{name}: what colour?"]},
                             answers={"colour": "{name} is {value}."})
    a = kb.attributes["colour"]
    assert (a.questions, a.heldout_questions, a.answer) == (("Which colour is {name}?",), ("{name}: what colour?",),
                                                            "{name} is {value}.")
    assert kb.attributes["delivery_time"].questions == GENERIC["delivery_time"][0]


def _error(path, **kw) -> str:
    with pytest.raises(KnowledgeBaseError) as e:
        load_knowledge_base(path, **kw)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    return message


def test_load_errors_name_file_and_line(tmp_path) -> None:
    assert "not found" in _error(tmp_path / "missing.csv")
    no_name = tmp_path / "no_name.csv"
    no_name.write_text("title,colour\nRed Mug,red\n")
    assert f"{no_name}:1:" in _error(no_name) and "name" in _error(no_name)
    blank_name = tmp_path / "blank_name.csv"
    blank_name.write_text("name,colour\nRed Mug,red\n ,blue\n")
    assert f"{blank_name}:3:" in _error(blank_name)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"name": "Red Mug", "colour": "red"}\n{"name": "Blue Cup", "colour": "blue"}\n{"name": \n')
    assert f"{bad_json}:3:" in _error(bad_json)
    nameless = tmp_path / "nameless.jsonl"
    nameless.write_text('{"name": "Red Mug", "colour": "red"}\n{"colour": "blue"}\n')
    assert f"{nameless}:2:" in _error(nameless)
    not_object = tmp_path / "list.jsonl"
    not_object.write_text('["Red Mug", "red"]\n')
    assert f"{not_object}:1:" in _error(not_object)
    duplicate = tmp_path / "dup.csv"
    duplicate.write_text("name,colour\nRed Mug,red\nBlue Cup,blue\nred  MUG,green\n")
    assert "red mug" in _error(duplicate)
    templates = tmp_path / "kb.csv"
    templates.write_text(CSV)
    assert "weight" in _error(templates, questions={"weight": ["How heavy is {name}?"]})
    assert "weight" in _error(templates, answers={"weight": "{name} weighs {value}."})
    only_names = tmp_path / "only_names.csv"
    only_names.write_text("name\nRed Mug\n")
    assert "no attribute" in _error(only_names)


def test_shop_attributes_answer_every_shop_field() -> None:
    assert set(SHOP_ATTRIBUTES) == set(PRODUCT_KEYS) | set(ORDER_KEYS)
    for a in SHOP_ATTRIBUTES.values():
        assert a.questions and a.heldout_questions and not set(a.questions) & set(a.heldout_questions)
        assert all("{name}" in q for q in a.questions + a.heldout_questions)


def test_lookup_prefers_the_exact_name_over_a_shorter_name_inside_it() -> None:
    # "iPhone 15" contains all its words in the query "iPhone 15 Pro" as the exact row does: the exact row wins
    rows = [{"name": "iPhone 15", "price": "$799"}, {"name": "iPhone 15 Pro", "price": "$999"},
            {"name": "Pixel 8", "price": "$699"}]
    kb = KnowledgeBase(rows, {"price": Attribute.default("price")})
    assert kb.lookup("iPhone 15") == [rows[0]]
    assert kb.lookup("iPhone 15 Pro") == [rows[1]]
