"""Configuration files in YAML read as nodes that know their line, with errors "<file>:<line>: <message>".

The text is composed to a node graph only: no Python object is ever constructed, and anchors, aliases and tags
other than YAML's standard ones are refused, so a file can only be data. `Document` then reads the nodes through
typed accessors; each refusal raises YamlError naming the file and the line of the offending node (line 0: the
file as a whole). The `what` argument of an accessor names the value in its messages ("rule 3", "channels[1]").
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Iterable, NoReturn

import yaml

IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # a letter first: names starting with _ stay free for code
_STANDARD_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq"))


class YamlError(ValueError):
    """A refused file or value; str() is '<file>:<line>: <message>'."""

    def __init__(self, source: str, line: int, message: str):
        super().__init__(f"{source}:{line}: {message}")
        self.source, self.line, self.message = source, line, message


def line_of(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a file, without newline translation (so it encodes back to the exact file bytes)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise YamlError(str(path), 0, f"cannot read {what}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise YamlError(str(path), 0, f"{what} is not UTF-8") from None


class _NodeComposer(yaml.SafeLoader):
    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source = source

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.MarkedYAMLError(None, None, "anchors and aliases are not allowed", event.start_mark)
        node = super().compose_node(parent, index)
        if node.tag not in _STANDARD_TAGS:  # e.g. !!python/object: never constructed, still refused
            raise YamlError(self.source, line_of(node), f"YAML tag {node.tag!r} is not allowed")
        return node


def _compose(text: str, source: str) -> yaml.Node | None:
    try:
        composer = _NodeComposer(text, source)
        try:
            return composer.get_single_node()
        finally:
            composer.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlError(source, mark.line + 1 if mark else 0, f"invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise YamlError(source, 0, f"invalid YAML: {exc}") from None


class Fields(dict[str, yaml.Node]):
    """The values of a mapping by key, keeping the mapping's node to name its line when a key is missing."""

    def __init__(self, doc: Document, node: yaml.MappingNode, what: str):
        super().__init__()
        self.doc, self.node, self.what = doc, node, what

    def need(self, key: str) -> yaml.Node:
        if key not in self:
            self.doc.fail(self.node, f"{self.what} is missing {key!r}")
        return self[key]


class Document:
    """A composed YAML text (`what` names it in messages, e.g. "the pack") and the accessors that read it."""

    def __init__(self, text: str, source: str, what: str):
        self.source, self.text = source, text
        self.lines = text.splitlines()
        root = _compose(text, source)
        if root is None:
            self.fail(1, f"{what} is empty")
        self.root: yaml.Node = root

    def fail(self, at: yaml.Node | int, message: str) -> NoReturn:
        raise YamlError(self.source, at if isinstance(at, int) else line_of(at), message)

    def entries(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, str, yaml.Node]]:
        """(key node, key, value node) of a mapping with any keys; a key given twice is an error (plain YAML
        would silently keep the last)."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, f"{what} must be a mapping")
        seen, result = set(), []
        for key, value in node.value:
            name = self.scalar(key, f"a key of {what}")
            if name in seen:
                self.fail(key, f"duplicate key {name!r} in {what}")
            seen.add(name)
            result.append((key, name, value))
        return result

    def mapping(self, node: yaml.Node, what: str, required: Iterable[str] = (),
                optional: Iterable[str] = ()) -> Fields:
        """A mapping with a fixed set of keys: an unknown key or a missing required key is an error."""
        required, optional = tuple(required), tuple(optional)
        fields = Fields(self, node, what)
        for key, name, value in self.entries(node, what):
            if name not in required and name not in optional:
                self.fail(key, f"unknown key {name!r} in {what} (expected {', '.join(required + optional)})")
            fields[name] = value
        for name in required:
            fields.need(name)
        return fields

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, f"{what} must be a list")
        return node.value

    def scalar(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.value == "":
            self.fail(node, f"{what} must be a non-empty value")
        return node.value

    def identifier(self, node: yaml.Node, what: str, reserved: Iterable[str] = ()) -> str:
        name = self.scalar(node, what)
        if not IDENTIFIER.fullmatch(name) or name in reserved:
            self.fail(node, f"{what} {name!r} is not a valid name")
        return name

    def integer(self, node: yaml.Node, what: str) -> int:
        text = self.scalar(node, what)
        if not text.isdigit() or not text.isascii():
            self.fail(node, f"{what} must be a non-negative integer, got {text!r}")
        return int(text)

    def choice(self, node: yaml.Node, what: str, allowed: Iterable[str]) -> str:
        allowed = tuple(allowed)
        value = self.scalar(node, what)
        if value not in allowed:
            *others, last = allowed
            either = f"{', '.join(others)} or {last}" if others else last
            self.fail(node, f"{what} must be {either}, got {value!r}")
        return value

    def names(self, node: yaml.Node, what: str) -> dict[str, yaml.Node]:
        """A non-empty list of distinct values: each value -> its node, in file order."""
        items = self.sequence(node, what)
        if not items:
            self.fail(node, f"{what} must be a non-empty list")
        found: dict[str, yaml.Node] = {}
        for item in items:
            name = self.scalar(item, f"an entry of {what}")
            if name in found:
                self.fail(item, f"{what}: {name!r} is listed twice")
            found[name] = item
        return found

    def located(self, node: yaml.Node, what: str) -> tuple[str, int, int]:
        """A scalar's text with the file line and column where it starts, so that a parser of the text can name
        file positions: a block scalar (| or >) is re-indented as in the file."""
        text = self.scalar(node, what)
        line, column = line_of(node), node.start_mark.column + 1
        if node.style in ("|", ">"):
            line, column = line + 1, 1
            first = self.lines[line - 1] if line <= len(self.lines) else ""
            text = textwrap.indent(text, " " * (len(first) - len(first.lstrip(" "))))
        elif node.style in ("'", '"'):
            column += 1
        return text, line, column
