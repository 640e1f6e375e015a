"""Prompt parser: relation triplets with character spans, on a blank spaCy pipeline."""
from __future__ import annotations

import dataclasses
import json

import pytest

from l2s.errors import L2SError, PromptError
from l2s.parsing import NonDirectional, ParsedPrompt, Triplet, parse_cli_json, parse_prompt
from l2s.relations import CANONICAL

# (prompt, expected steerable triplets, expected non-directional triplets)
CASES: list[tuple[str, list[tuple[str, str, str]], list[tuple[str, str, str]]]] = [
    # --- GenEval position template (verbatim metadata prompts and the template's variants) ---
    ("a photo of a dog right of a teddy bear", [("dog", "right of", "teddy bear")], []),
    ("a photo of a wine glass above a kite", [("wine glass", "above", "kite")], []),
    ("a photo of a couch below a cup", [("couch", "below", "cup")], []),
    ("a photo of a laptop left of a cow", [("laptop", "left of", "cow")], []),
    ("a photo of a fork above a hair drier", [("fork", "above", "hair drier")], []),
    ("a photo of an orange below a tv remote", [("orange", "below", "tv remote")], []),
    ("a photo of a baseball glove left of a cell phone",
     [("baseball glove", "left of", "cell phone")], []),
    ("a photo of a traffic light right of a fire hydrant",
     [("traffic light", "right of", "fire hydrant")], []),
    ("a photo of a potted plant above a hot dog", [("potted plant", "above", "hot dog")], []),
    ("a photo of an apple left of an elephant", [("apple", "left of", "elephant")], []),
    ("a photo of a stop sign below a parking meter", [("stop sign", "below", "parking meter")], []),
    ("a photo of a sports ball right of a tennis racket",
     [("sports ball", "right of", "tennis racket")], []),
    # the published parser renamed "dog" to "hot dog" when both appeared: not here
    ("a dog left of a hot dog", [("dog", "left of", "hot dog")], []),
    ("a photo of a bear above a teddy bear", [("bear", "above", "teddy bear")], []),
    # --- T2I-CompBench spatial (verbatim) ---
    ("a girl on the top of a frog", [("girl", "above", "frog")], []),
    ("a bee on the right of a refrigerator", [("bee", "right of", "refrigerator")], []),
    ("a sheep on the left of a lamp", [("sheep", "left of", "lamp")], []),
    ("a bicycle on the bottom of a girl", [("bicycle", "below", "girl")], []),
    ("a bird on side of a airplane", [], [("bird", "on side of", "airplane")]),
    ("a mouse on side of a key", [], [("mouse", "on side of", "key")]),
    ("a giraffe next to a lamp", [], [("giraffe", "next to", "lamp")]),
    ("a mouse near a bowl", [], [("mouse", "near", "bowl")]),
    # T2I-CompBench complex, with copulas and adjectives
    ("The red hat was on top of the brown coat rack.",
     [("red hat", "above", "brown coat rack")], []),
    ("The fluffy cat is on the left of the soft pillow.",
     [("fluffy cat", "left of", "soft pillow")], []),
    ("The black headphones were next to the green phone.", [],
     [("black headphones", "next to", "green phone")]),
    ("The sleek black cat sat on top of the fluffy white pillow.",
     [("sleek black cat", "above", "fluffy white pillow")], []),
    # --- common English phrasings of the four directions ---
    ("a cat to the left of a dog", [("cat", "left of", "dog")], []),
    ("a cat to the right of a dog", [("cat", "right of", "dog")], []),
    ("a cat at the left of a dog", [("cat", "left of", "dog")], []),
    ("a cat on the left side of a dog", [("cat", "left of", "dog")], []),
    ("a cat to the right-hand side of a dog", [("cat", "right of", "dog")], []),
    ("a cat on top of a dog", [("cat", "above", "dog")], []),
    ("a lamp over a table", [("lamp", "above", "table")], []),
    ("a cat atop a dog", [("cat", "above", "dog")], []),
    ("a cat under a table", [("cat", "below", "table")], []),
    ("a cat beneath a table", [("cat", "below", "table")], []),
    ("a cat underneath a table", [("cat", "below", "table")], []),
    ("a rug on the bottom of a chair", [("rug", "below", "chair")], []),
    ("a rug on bottom of a chair", [("rug", "below", "chair")], []),
    # --- diagonals, all spellings ---
    ("a book top-left of a laptop", [("book", "top-left of", "laptop")], []),
    ("a book top left of a laptop", [("book", "top-left of", "laptop")], []),
    ("a book to the top-right of a laptop", [("book", "top-right of", "laptop")], []),
    ("a book to the top right of a laptop", [("book", "top-right of", "laptop")], []),
    ("a book bottom-left of a laptop", [("book", "bottom-left of", "laptop")], []),
    ("a book on the bottom-right of a laptop", [("book", "bottom-right of", "laptop")], []),
    ("a book upper left of a laptop", [("book", "top-left of", "laptop")], []),
    ("a book lower-right of a laptop", [("book", "bottom-right of", "laptop")], []),
    ("a book above-left of a laptop", [("book", "top-left of", "laptop")], []),
    ("a book above left of a laptop", [("book", "top-left of", "laptop")], []),
    ("a book below-right of a laptop", [("book", "bottom-right of", "laptop")], []),
    ("a book above and to the left of a laptop", [("book", "top-left of", "laptop")], []),
    ("a book below and to the right of a laptop", [("book", "bottom-right of", "laptop")], []),
    ("a book above-to the right of a laptop", [("book", "top-right of", "laptop")], []),
    ("a book to the left of and below a laptop", [("book", "bottom-left of", "laptop")], []),
    ("a big yellow square bottom-right of a red circle",
     [("big yellow square", "bottom-right of", "red circle")], []),
    # --- case, prefixes, articles, copulas, punctuation, whitespace ---
    ("A Cat Above A Dog", [("Cat", "above", "Dog")], []),
    ("a cat LEFT OF a dog", [("cat", "left of", "dog")], []),
    ("A photo of a cat below a dog.", [("cat", "below", "dog")], []),
    ("an image of a cat above a dog", [("cat", "above", "dog")], []),
    ("a drawing of a cat above a dog", [("cat", "above", "dog")], []),
    ("a painting of a cat above a dog", [("cat", "above", "dog")], []),
    ("an illustration of a cat above a dog", [("cat", "above", "dog")], []),
    ("a 3d animation of a cat above a dog", [("cat", "above", "dog")], []),
    ("a hyper-realistic digital painting of a cat above a dog", [("cat", "above", "dog")], []),
    ("a cinematic sci-fi movie scene of a robot left of a spaceship",
     [("robot", "left of", "spaceship")], []),
    ("a top-down view of a plate left of a fork", [("plate", "left of", "fork")], []),
    ("  a photo of a cat under a table  ", [("cat", "below", "table")], []),
    ("a teddy  bear left\nof a\tdog", [("teddy  bear", "left of", "dog")], []),
    ("a cat is above a dog", [("cat", "above", "dog")], []),
    ("the cats are below the dogs", [("cats", "below", "dogs")], []),
    ("there is a cat above a dog", [("cat", "above", "dog")], []),
    ("one cat above some dogs!", [("cat", "above", "dogs")], []),
    ("a cat is sitting directly above a dog in a park", [("cat", "above", "dog")], []),
    ("a man in a suit left of a woman with an umbrella", [("man", "left of", "woman")], []),
    ("a fluffy dog right of a red circle", [("fluffy dog", "right of", "red circle")], []),
    ("a black and white cat left of a dog", [("black and white cat", "left of", "dog")], []),
    ("a cup of coffee left of a plate", [("cup of coffee", "left of", "plate")], []),
    ("a silver flying saucer above a red rose", [("silver flying saucer", "above", "red rose")],
     []),
    ("a dog sleeping on a mat left of a green hanging plant",
     [("dog", "left of", "green hanging plant")], []),
    ("a lamp hanging directly over a table", [("lamp", "above", "table")], []),
    ("The bright orange pumpkin sat next to the crisp green apples.", [],
     [("bright orange pumpkin", "next to", "crisp green apples")]),
    ("an overhead lamp above a table", [("overhead lamp", "above", "table")], []),
    # --- chains and multi-relation forms ---
    ("a frog above a sneakers below a teapot",
     [("frog", "above", "sneakers"), ("sneakers", "below", "teapot")], []),
    ("a photo of a cat left of a dog right of a cow above a bird",
     [("cat", "left of", "dog"), ("dog", "right of", "cow"), ("cow", "above", "bird")], []),
    ("a photo of a horse above a bus and a cup to the left of a dog",
     [("horse", "above", "bus"), ("cup", "left of", "dog")], []),
    ("a teddy bear above a fire hydrant; and the same fire hydrant left of a potted plant",
     [("teddy bear", "above", "fire hydrant"), ("fire hydrant", "left of", "potted plant")], []),
    ("a cat above a dog; and the same dog right of a ball",
     [("cat", "above", "dog"), ("dog", "right of", "ball")], []),
    ("a cat above a dog;and the same dog below a ball",
     [("cat", "above", "dog"), ("dog", "below", "ball")], []),
    ("a photo of a umbrella above a mouse below a chair and a cat left of a vase",
     [("umbrella", "above", "mouse"), ("mouse", "below", "chair"), ("cat", "left of", "vase")], []),
    ("a photo of a kite below a cake to the right of a vase and a fork above a bench",
     [("kite", "below", "cake"), ("cake", "right of", "vase"), ("fork", "above", "bench")], []),
    ("a cat left of a dog and above a ball", [("cat", "left of", "dog"), ("cat", "above", "ball")],
     []),
    ("a cat next to a dog above a ball", [("dog", "above", "ball")], [("cat", "next to", "dog")]),
    ("a photo of a cat above a dog, by Van Gogh", [("cat", "above", "dog")], []),
    ("Under a bridge, a troll left of a goat", [("troll", "left of", "goat")], []),
    # --- no steerable relation ---
    ("a cat", [], []),
    ("a photo of a cat", [], []),
    ("a red car on a sunny day", [], []),
    ("a leftover pizza", [], []),
    ("a topiary in a garden", [], []),
    ("an underwater scene", [], []),
    ("a rightful king", [], []),
    ("a left shoe and a right shoe", [], []),
    ("the game is over", [], []),
    ("a dog running over and over", [], []),
    ("a house under construction", [], []),
    ("a table with a cat underneath", [], []),
    ("a cat beside a dog", [], [("cat", "beside", "dog")]),
    ("a cat in front of a dog", [], [("cat", "in front of", "dog")]),
    ("a cat behind a dog", [], [("cat", "behind", "dog")]),
]


def _as_tuples(entries) -> list[tuple[str, str, str]]:
    return [(e.subject, e.relation, e.object) for e in entries]


def test_table_is_large_enough():
    assert len(CASES) >= 80
    assert len({prompt for prompt, _, _ in CASES}) == len(CASES), "duplicate prompt in the table"


@pytest.mark.parametrize("prompt,triplets,non_directional", CASES,
                         ids=[prompt.strip()[:60] for prompt, _, _ in CASES])
def test_parse_table(prompt, triplets, non_directional):
    parsed = parse_prompt(prompt)
    assert _as_tuples(parsed.triplets) == triplets
    assert _as_tuples(parsed.non_directional) == non_directional
    assert parsed.steerable is bool(triplets)
    assert parsed.prompt == prompt
    for entry in parsed.triplets + parsed.non_directional:
        # Spans index the ORIGINAL prompt, whatever was stripped around them.
        assert prompt[slice(*entry.subject_span)] == entry.subject
        assert prompt[slice(*entry.object_span)] == entry.object
        assert entry.subject_span[1] <= entry.relation_span[0]
        assert entry.relation_span[1] <= entry.object_span[0]
    for triplet in parsed.triplets:
        assert triplet.relation in CANONICAL
    for entry in parsed.non_directional:
        assert prompt[slice(*entry.relation_span)] == entry.relation


def test_spans_point_at_the_written_phrases():
    prompt = "A photo of a Teddy Bear on the left of a red fire hydrant"
    (triplet,) = parse_prompt(prompt).triplets
    assert triplet.subject == "Teddy Bear" and triplet.subject_span == (13, 23)
    assert prompt[slice(*triplet.relation_span)] == "on the left of"
    assert triplet.relation == "left of"
    assert triplet.object == "red fire hydrant"
    assert triplet.object_span == (len(prompt) - len("red fire hydrant"), len(prompt))


def test_chain_shares_the_middle_phrase_span():
    first, second = parse_prompt("a frog above a sneakers below a teapot").triplets
    assert first.object_span == second.subject_span


def test_the_same_form_points_at_the_repeated_mention():
    prompt = "a cat above a dog; and the same dog right of a ball"
    first, second = parse_prompt(prompt).triplets
    assert first.object_span == (prompt.index("dog"), prompt.index("dog") + 3)
    assert second.subject_span == (prompt.rindex("dog"), prompt.rindex("dog") + 3)


def test_coordinated_relation_reuses_the_subject_span():
    first, second = parse_prompt("a cat left of a dog and above a ball").triplets
    assert second.subject_span == first.subject_span == (2, 5)


@pytest.mark.parametrize("prompt,left_out", [
    ("a cat and a dog left of a tree", [("cat", "dog", "dog left of tree")]),
    ("a cat left of a dog and a bird", [("bird", "dog", "cat left of dog")]),
    ("a photo of a cat & dog above a tree", [("cat", "dog", "dog above tree")]),
    ("a cat and a dog and a fish left of a tree", [("cat", "fish", "fish left of tree"),
                                                   ("dog", "fish", "fish left of tree")]),
    ("a cat left of a dog and a bird and a fish above a tree", [("bird", "dog", "cat left of dog")]),
])
def test_an_object_joined_by_and_to_a_relation_is_named_not_dropped_silently(prompt, left_out):
    parsed = parse_prompt(prompt)
    assert [(c.phrase, c.joined_to, f"{c.triplet.subject} {c.triplet.relation} {c.triplet.object}")
            for c in parsed.coordinated] == left_out
    assert all(prompt[slice(*c.span)] == c.phrase for c in parsed.coordinated)


def test_the_left_out_object_is_one_warning_line_naming_what_is_steered():
    assert parse_prompt("a cat and a dog left of a tree").coordination_warnings() == [
        "'cat' is joined to 'dog' by 'and': only 'dog left of tree' is steered, not 'cat'; "
        "give the relations (--relations, or relations= in Python) to steer both"]


@pytest.mark.parametrize("prompt", [
    *(prompt for prompt, _, _ in CASES),                      # the documented parses leave nothing out
    "a cat left of a dog and a bird is flying",               # a clause of its own, not a list of objects
    "a cat and a dog next to a tree",                         # nothing steered: the note names it
])
def test_relations_and_clauses_joined_by_and_are_no_left_out_object(prompt):
    assert parse_prompt(prompt).coordination_warnings() == []


@pytest.mark.parametrize("prompt,left_out", [
    ("a cat, a dog to the left of a tree", [("cat", "dog", ",")]),
    ("a cat left of a dog, a bird", [("bird", "dog", ",")]),
    ("a cat, a dog and a bird left of a tree", [("cat", "bird", ","), ("dog", "bird", "and")]),
    ("a cat, a dog, and a bird left of a tree", [("cat", "bird", ","), ("dog", "bird", ",")]),   # serial comma
    ("a cat left of a dog, and a bird", [("bird", "dog", "and")]),
    ("the cat, two dogs left of a tree", [("cat", "two dogs", ",")]),
])
def test_an_object_listed_by_a_comma_is_named_as_one_joined_by_and(prompt, left_out):
    parsed = parse_prompt(prompt)
    assert [(c.phrase, c.joined_to, c.word) for c in parsed.coordinated] == left_out
    assert all(prompt[slice(*c.span)] == c.phrase for c in parsed.coordinated)


def test_the_object_a_comma_lists_is_one_warning_line_and_the_relations_read_are_the_same():
    parsed = parse_prompt("a cat, a dog to the left of a tree")
    assert parsed.triplet_dicts() == [{"subject": "dog", "relation": "left of", "object": "tree"}]
    assert parsed.coordination_warnings() == [
        "'cat' is joined to 'dog' by ',': only 'dog left of tree' is steered, not 'cat'; "
        "give the relations (--relations, or relations= in Python) to steer both"]


@pytest.mark.parametrize("prompt", [
    "a cat left of a dog, digital art, 4k, highly detailed",   # a prompt's style words: no article
    "digital art, a cat left of a dog",
    "a photo of a cat above a dog, by Van Gogh",
    "a cat left of a dog, in the snow",
    "a cat left of a dog, a bird above a tree",                # each clause in a relation
    "a cat left of a dog, a bird is flying",                   # a clause of its own
    "a cat above a dog; a bird",                               # a comma lists, a semicolon does not
    "a cat left of a dog, a masterpiece",                      # an article before style words
    "a dog above a cat, a high quality render",
    "a cat to the right of a dog, an oil painting",
])
def test_a_comma_before_what_is_no_listed_object_leaves_nothing_out(prompt):
    assert parse_prompt(prompt).coordination_warnings() == []


def test_five_objects_three_relations():
    prompt = "a photo of a teapot above a corgi left of a furby and a robot below a turtle"
    assert parse_cli_json(prompt) == [
        {"subject": "teapot", "relation": "above", "object": "corgi"},
        {"subject": "corgi", "relation": "left of", "object": "furby"},
        {"subject": "robot", "relation": "below", "object": "turtle"},
    ]


def test_relation_inside_the_prefix_is_not_a_relation():
    # Only a LEADING medium phrase is skipped; a later "a photo of" is part of an object.
    assert _as_tuples(parse_prompt("a cat above a photo of a dog").triplets) == [
        ("cat", "above", "photo of a dog")]


@pytest.mark.parametrize("prompt,relation", [
    ("left of a dog", "left of"),
    ("above a cat", "above"),
    ("a cat above", "above"),
    ("a cat above.", "above"),
    ("a photo of a dog to the right of", "to the right of"),
    ("a cat top-left of", "top-left of"),
    ("a cat left of a dog right of", "right of"),
    ("a cat above below a dog", "above"),
    ("a photo of on the top of a frog", "on the top of"),
])
def test_relation_missing_an_object_is_an_error(prompt, relation):
    with pytest.raises(PromptError) as info:
        parse_prompt(prompt)
    message = str(info.value)
    assert f"'{relation}'" in message
    assert "\n" not in message


def test_error_message_stays_on_one_line():
    with pytest.raises(PromptError) as info:
        parse_prompt("a cat left\nof")
    assert "\n" not in str(info.value) and "'left of'" in str(info.value)


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt_is_an_error(prompt):
    with pytest.raises(PromptError, match="empty"):
        parse_prompt(prompt)


def test_text_that_is_not_utf8_is_an_error_for_the_parser_and_given_relations():
    from l2s.steer.plan import parsed_from_relations

    with pytest.raises(PromptError, match="^the prompt is not UTF-8 text$"):
        parse_prompt("a cat \udcff left of a dog")          # undecodable argv bytes
    with pytest.raises(PromptError, match="^the prompt is not UTF-8 text$"):
        parsed_from_relations("a cat \udcff left of a dog", [("cat", "left of", "dog")])


def test_non_string_prompt_is_an_error():
    with pytest.raises(PromptError):
        parse_prompt(None)  # type: ignore[arg-type]


def test_prompt_error_is_an_l2s_error():
    with pytest.raises(L2SError):
        parse_prompt("below")


def test_dangling_non_directional_word_is_not_an_error():
    parsed = parse_prompt("a cat sitting near")
    assert parsed.triplets == [] and parsed.non_directional == []


def test_cli_json_shape():
    out = parse_cli_json("a photo of a dog right of a teddy bear")
    assert out == [{"subject": "dog", "relation": "right of", "object": "teddy bear"}]
    assert json.loads(json.dumps(out)) == out
    assert parse_cli_json("a cat next to a dog") == []
    with pytest.raises(PromptError):
        parse_cli_json("a cat above")


def test_to_dict_and_spans():
    (triplet,) = parse_prompt("a cat above a dog").triplets
    assert triplet.to_dict() == {"subject": "cat", "relation": "above", "object": "dog"}
    assert (triplet.subject_span, triplet.relation_span, triplet.object_span) == ((2, 5), (6, 11), (14, 17))
    (near,) = parse_prompt("a cat next to a dog").non_directional
    assert near.to_dict() == {"subject": "cat", "relation": "next to", "object": "dog"}


def test_results_are_immutable_values():
    triplet = parse_prompt("a cat above a dog").triplets[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        triplet.subject = "dog"  # type: ignore[misc]
    assert triplet == Triplet("cat", "above", "dog", (2, 5), (6, 11), (14, 17))
    assert isinstance(parse_prompt("a cat near a dog").non_directional[0], NonDirectional)


def test_describe():
    assert parse_prompt("a cat").describe() == "no spatial relation found: generating unsteered"
    nondir = parse_prompt("a cat next to a dog").describe()
    assert "cat next to dog" in nondir and "unsteered" in nondir
    one = parse_prompt("a cat above a dog").describe()
    assert one == "steering 1 relation: cat above dog"
    two = parse_prompt("a cat next to a dog above a ball; and the same ball left of a cup")
    assert two.describe() == ("steering 2 relations: dog above ball; ball left of cup "
                              "(not steered: cat next to dog)")


def test_parsed_prompt_steerable_follows_triplets():
    parsed = ParsedPrompt("x")
    assert not parsed.steerable
    parsed.triplets.append(Triplet("a", "above", "b", (0, 1), (2, 7), (8, 9)))
    assert parsed.steerable


def test_parsing_is_deterministic_and_matchers_are_built_once():
    from l2s.parsing.matchers import spacy_matchers
    prompt = "a photo of a kite below a cake to the right of a vase and a fork above a bench"
    first = parse_prompt(prompt)
    spacy_matchers.cache_clear()
    second = parse_prompt(prompt)
    for _ in range(20):
        parse_prompt(prompt)
    assert first == second
    assert spacy_matchers.cache_info().misses == 1
