"""Answer matching: numbers, money, dates and words in the forms people write them."""

import doctest

import pytest

import lmpo.data.matching as matching
from lmpo.data.matching import states_value, token_f1


def test_doctests() -> None:
    assert doctest.testmod(matching).failed == 0


@pytest.mark.parametrize(("reply", "value", "expected"), [
    ("The lamp costs $34.99.", "$34.99", True),
    ("It's 34.99 dollars", "$34.99", True),
    ("That is $1,299.00 today", "$1299.00", True),
    ("It costs $34.90.", "$34.99", False),
    ("We have 17 units in stock.", "17 units", True),
    ("We have 71 in stock.", "17 units", False),
    ("It should arrive on 2026-12-14.", "December 14", True),
    ("Expected 12/14.", "December 14", True),
    ("Arriving Dec 14th", "December 14", True),
    ("the 14th of December", "December 14", True),
    ("It arrives on December 15.", "December 14", False),
    ("It arrives on November 14.", "December 14", False),
    ("The kettle is teal.", "teal", True),
    ("The kettle is steal grey", "teal", False),
    ("It contains the Swift Cedar Lamp.", "Swift Cedar Lamp", True),
    ("It contains the Swift Lamp.", "Swift Cedar Lamp", False),
    ("", "teal", False),
])
def test_states_value(reply: str, value: str, expected: bool) -> None:
    assert states_value(reply, value) is expected


def test_token_f1_by_hand() -> None:
    # candidate {hello, there, friend}, reference {hello, friend}: P = 2/3, R = 1, F1 = 0.8
    assert token_f1("Hello there, friend!", "hello friend") == pytest.approx(0.8)
    assert token_f1("Café", "cafe") == 1.0
    assert token_f1("yes yes", "yes") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_a_number_keeps_its_unit() -> None:
    assert states_value("Delivery takes 8 days.", "8 days")
    assert not states_value("It has a 8 years warranty.", "8 days")  # seen in a demo: judged satisfied once
    assert states_value("Checkout is at 12 pm.", "12 pm") and not states_value("Checkout is at 12.", "12 pm")
