"""transforms/core/yamlnodes.py: YAML composed to nodes only, and accessors whose errors name file and line."""
from __future__ import annotations

import pytest

from transforms.core.yamlnodes import Document, YamlError, read_text

TEXT = """\
name: demo
count: 3
kind: b
items: [x, y]
block: |
  first
  second
"""


def doc(text: str = TEXT) -> Document:
    return Document(text, "conf.yaml", "the file")


def error(call) -> str:
    with pytest.raises(YamlError) as info:
        call()
    return str(info.value)


def test_error_carries_file_line_and_message():
    exc = YamlError("conf.yaml", 7, "bad")
    assert (str(exc), exc.source, exc.line, exc.message) == ("conf.yaml:7: bad", "conf.yaml", 7, "bad")
    assert isinstance(exc, ValueError)


@pytest.mark.parametrize("text, expected", [
    ("", "conf.yaml:1: the file is empty"),
    ("a: &x 1\nb: *x\n", "conf.yaml:1: invalid YAML: anchors and aliases are not allowed"),
    ("a: 1\nb: !!python/object/apply:os.system ['touch pwned']\n",
     "conf.yaml:2: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed"),
    ("a:\n  - !custom {b: 1}\n", "conf.yaml:2: YAML tag '!custom' is not allowed"),  # inside a list, too
    ("a: [1, 2\n", "conf.yaml:2: invalid YAML: expected ',' or ']'"),
])
def test_composition_refuses_what_is_not_plain_data(text, expected):
    assert error(lambda: doc(text)).startswith(expected)


def test_mapping_keys_required_optional_unknown_and_duplicate():
    d = doc()
    fields = d.mapping(d.root, "the file", required=("name", "count"), optional=("kind", "items", "block", "x"))
    assert list(fields) == ["name", "count", "kind", "items", "block"] and "x" not in fields
    assert error(lambda: d.mapping(d.root, "the file", required=("name",), optional=("count",))).startswith(
        "conf.yaml:3: unknown key 'kind' in the file (expected name, count)")
    assert error(lambda: fields.need("x")) == "conf.yaml:1: the file is missing 'x'"
    twice = doc("a: 1\nb: 2\na: 3\n")
    assert error(lambda: twice.entries(twice.root, "the file")) == "conf.yaml:3: duplicate key 'a' in the file"
    assert error(lambda: d.mapping(fields["items"], "items")) == "conf.yaml:4: items must be a mapping"


def test_scalar_accessors():
    d = doc()
    fields = d.mapping(d.root, "the file", optional=("name", "count", "kind", "items", "block"))
    assert d.integer(fields["count"], "count") == 3
    assert error(lambda: d.integer(fields["name"], "count")) == \
        "conf.yaml:1: count must be a non-negative integer, got 'demo'"
    assert d.identifier(fields["name"], "name") == "demo"
    assert error(lambda: d.identifier(fields["name"], "name", reserved={"demo"})) == \
        "conf.yaml:1: name 'demo' is not a valid name"
    assert d.choice(fields["kind"], "kind", ("a", "b")) == "b"
    assert error(lambda: d.choice(fields["kind"], "kind", ("a", "c", "d"))) == \
        "conf.yaml:3: kind must be a, c or d, got 'b'"
    assert error(lambda: d.scalar(fields["items"], "items")) == "conf.yaml:4: items must be a non-empty value"
    assert error(lambda: d.scalar(doc("a:\n").root.value[0][1], "a")) == "conf.yaml:1: a must be a non-empty value"


def test_sequence_and_names():
    d = doc()
    fields = d.mapping(d.root, "the file", optional=("name", "count", "kind", "items", "block"))
    assert [n.value for n in d.sequence(fields["items"], "items")] == ["x", "y"]
    assert error(lambda: d.sequence(fields["name"], "name")) == "conf.yaml:1: name must be a list"
    assert list(d.names(fields["items"], "items")) == ["x", "y"]
    listed = doc("fields:\n  - a\n  - b\n  - a\nnone: []\n")
    top = listed.mapping(listed.root, "the file", required=("fields", "none"))
    assert error(lambda: listed.names(top["fields"], "fields")) == "conf.yaml:4: fields: 'a' is listed twice"
    assert error(lambda: listed.names(top["none"], "none")) == "conf.yaml:5: none must be a non-empty list"


@pytest.mark.parametrize("text, expected", [
    ("when: a > 1\n", ("a > 1", 1, 7)),
    ("when: 'a > 1'\n", ("a > 1", 1, 8)),  # inside the quote
    ("x: 1\nwhen: |\n    a > 1\n    and b\n", ("    a > 1\n    and b\n", 3, 1)),  # re-indented as in the file
])
def test_located_gives_file_positions(text, expected):
    d = doc(text)
    node = d.mapping(d.root, "the file", optional=("x", "when"))["when"]
    assert d.located(node, "when") == expected


def test_read_text(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_bytes("a: 1\r\nb: 二\r\n".encode("utf-8"))
    assert read_text(good, "the file").encode("utf-8") == good.read_bytes()  # no newline translation
    (tmp_path / "latin.yaml").write_bytes(b"a: caf\xe9\n")
    assert error(lambda: read_text(tmp_path / "latin.yaml", "the file")) == \
        f"{tmp_path / 'latin.yaml'}:0: the file is not UTF-8"
    assert error(lambda: read_text(tmp_path / "missing.yaml", "the file")).startswith(
        f"{tmp_path / 'missing.yaml'}:0: cannot read the file: ")
