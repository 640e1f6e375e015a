"""``l2s parse``: triplets of one prompt, or of every line of stdin."""
import io
import json
import sys

from l2s.cli import main


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_parse_json(capsys):
    code, out, _ = run(["parse", "--json", "a photo of a dog right of a teddy bear"], capsys)
    assert code == 0
    assert json.loads(out) == [{"subject": "dog", "relation": "right of", "object": "teddy bear"}]


def test_parse_json_from_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a cat above a dog\na cat next to a dog\n"))
    code, out, _ = run(["parse", "--json", "-"], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2
    assert json.loads(lines[0])[0]["relation"] == "above"
    assert json.loads(lines[1]) == []


def test_a_bad_stdin_line_is_named_and_the_rest_still_parse(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a cat above a dog\n\na cup left of a book\n"))
    code, out, err = run(["parse", "--json", "-"], capsys)
    assert code == 0 and [json.loads(line) for line in out.splitlines()][1:] == [
        [], [{"subject": "cup", "relation": "left of", "object": "book"}]]     # one array per input line
    assert err.splitlines() == ["l2s: warning: stdin line 2: prompt is empty"]


def test_parse_says_what_it_read_not_what_generate_would_do(capsys):
    code, out, _ = run(["parse", "a red circle"], capsys)
    assert code == 0 and out == "no spatial relation found\n"


def test_parse_names_the_non_directional_relations_beside_the_steered_ones(capsys):
    code, out, _ = run(["parse", "a cat next to a dog above a bird"], capsys)
    assert code == 0 and out == "dog | above | bird\nnot steered: cat next to dog\n"


def test_parse_warns_of_an_object_joined_by_and_and_prints_what_it_read(capsys):
    code, out, err = run(["parse", "a cat and a dog left of a tree"], capsys)
    assert code == 0 and out == "dog | left of | tree\n"
    assert err.startswith("l2s: warning: 'cat' is joined to 'dog' by 'and': only 'dog left of tree' is steered")


def test_parse_warns_of_an_object_a_comma_lists_in_no_relation(capsys):
    code, out, err = run(["parse", "a cat, a dog to the left of a tree"], capsys)
    assert code == 0 and out == "dog | left of | tree\n"
    assert err.splitlines() == ["l2s: warning: 'cat' is joined to 'dog' by ',': only 'dog left of tree' is steered, "
                                "not 'cat'; give the relations (--relations, or relations= in Python) to steer both"]


def test_parse_from_stdin_names_the_line_of_an_object_joined_by_and(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a cat above a dog\na cat left of a dog and a bird\n"))
    code, out, err = run(["parse", "--json", "-"], capsys)
    assert code == 0 and len(out.splitlines()) == 2
    assert err.startswith("l2s: warning: stdin line 2: 'bird' is joined to 'dog'")
