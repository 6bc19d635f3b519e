import re

from sightbeyond.embedded.shapesworld import SHAPES
from sightbeyond.embedded.tiny import grounded_chats

DESCRIPTION = re.compile(r"((?:an? \w+ \w+(?:, | and )?)+) on a dark background \.")
QUESTION_ANSWER = re.compile(r"Is there an? (\w+) in the image\?.*?(Yes|No), there", re.S)


def test_grounded_chats_answer_from_the_description_that_precedes_them():
    texts = grounded_chats(40, seed=3)
    assert texts == grounded_chats(40, seed=3)
    chats = [t for t in texts if "Is there" in t]
    copies = [t for t in texts if "Is there" not in t]
    assert len(chats) == 30 and len(copies) == 10
    for copy in copies:
        first, second, rest = copy.split("\n")
        assert DESCRIPTION.fullmatch(first) and first == second and rest == ""
    answers = {"Yes": 0, "No": 0}
    for chat in chats:
        described = DESCRIPTION.search(chat)
        assert described.start() < chat.index("Is there"), "the scene is described where the image goes, before asking"
        shown = {word for word in described.group(1).replace(",", " ").split() if word in SHAPES}
        asked = QUESTION_ANSWER.findall(chat)
        assert len(asked) == 2 + min(2, len(shown))
        for kind, answer in asked:
            assert (answer == "Yes") == (kind in shown), chat
            answers[answer] += 1
    assert answers["Yes"] > 0 and answers["No"] > 0


def test_no_grounded_chats_by_default():
    assert grounded_chats(0, seed=0) == []
