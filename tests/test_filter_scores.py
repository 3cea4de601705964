"""The scoring pieces of `filter`: normalising, word diff, CHAIR-style objects, refusals, MinHash dedup."""

from __future__ import annotations

import pytest

from stages import chair
from stages.filter import parse_verdict
from stages.minhash import DedupIndex
from stages.textsim import display_diff, is_refusal, normalise, repetition, similarity, word_diff, words

LONG = ("A man in a yellow shirt is ironing clothes on an ironing board that is attached to the back of a "
        "yellow taxi on a city street. Another yellow taxi drives past on the left.")


def test_identical_means_equal_up_to_case_whitespace_and_punctuation():
    assert normalise("A cat,  sitting.\n") == normalise("a cat sitting") == "a cat sitting"
    swapped = LONG.replace("ironing board", "ironing table")
    assert normalise(swapped) != normalise(LONG)
    assert similarity(words(LONG), words(swapped)) > 0.95
    d = word_diff(words(LONG), words(swapped))
    assert d.n_edits == 1 and d.changes() == [(["board"], ["table"])]


def test_display_diff_keeps_the_text_and_marks_changed_words():
    a, b = display_diff("A red cup, on a table.", "A blue cup, on a table!")
    assert "".join(t for t, _ in a) == "A red cup, on a table." and [t for t, ch in a if ch] == ["red "]
    assert [t for t, ch in b if ch] == ["blue "]


def test_chair_objects_longest_phrase_first_with_plurals_and_synonyms():
    text = "Two men eat hot dogs beside a teddy bear; knives lie by the laptops and a kitten sleeps on the sofa."
    assert chair.find_objects(text) == ["person", "hot dog", "teddy bear", "knife", "laptop", "cat", "couch"]
    assert chair.find_objects("A toilet seat.") == ["toilet"]  # not a chair
    # an object the ground truth lacks, unless the chosen answer names it (its synonym counts as named)
    assert chair.hallucinated_objects(words("A dog and a puppy near a car"), words("A car."), ["automobile"]) == ["dog"]
    assert chair.hallucinated_objects(words("A sofa."), words("A couch."), None) == []


def test_changed_attributes_ignore_omissions_but_not_negation():
    def attrs(a, b):
        return chair.changed_attributes(word_diff(words(a), words(b)).changes())

    assert attrs("Two red cups.", "Three red cups.") == ["two->three"]
    assert attrs("The cup is not full.", "The cup is full.") == ["-not"]
    assert attrs("A tall old tower.", "A tower.") == []  # leaving details out is no hallucination
    assert attrs("He smiles at the camera.", "He smiles at the camera near a fork.") == ["+near a fork"]


@pytest.mark.parametrize("text,expected", [
    ("I'm sorry, but I can't see the image.", True),
    ("Sorry, I cannot determine that from this picture.", True),
    ("As an AI language model, I can not view images.", True),
    ("No image was provided.", True),
    ("The man looks sorry about the broken vase.", False),
    ("The dog does not see the ball.", False),
])
def test_refusals(text, expected):
    assert is_refusal(text) is expected


def test_repetition_flags_loops_only():
    assert repetition(words("the cat sat " * 10)) > 0.8
    assert repetition(words(LONG)) == 0.0


def test_dedup_index_exact_near_scope_and_determinism():
    idx = DedupIndex(threshold=0.9)
    text = LONG + " Tall buildings line the street and banners hang from a building in the background."
    m, sig = idx.check(text)
    assert m is None
    idx.add(text, "p1", sig=sig)
    assert idx.check(text.upper())[0].reason == "duplicate"
    near = idx.check(text.replace("background.", "distance."))[0]
    assert near.reason == "near_duplicate" and near.of == "p1" and near.jaccard >= 0.9
    assert idx.check(LONG.replace("yellow shirt", "red shirt"))[0] is None  # a different pair, not a copy
    assert idx.check(text, scope="another item")[0] is None
    # signatures are stable across instances (and processes): rebuilding the index gives the same answers
    assert (DedupIndex(0.9).signature(text) == sig).all()


def test_parse_verdict():
    assert parse_verdict("YES. There is no dog.") == ("yes", "There is no dog")
    assert parse_verdict("no: consistent") == ("no", "consistent")
    assert parse_verdict("I think so")[0] == "unclear"
