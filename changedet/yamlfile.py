"""Reading the YAML a user hands over (config files, manifests, ``--set`` values) with bounds.

:func:`yaml.safe_load` builds nothing dangerous, but it accepts documents that are small on
disk and huge in memory: nested aliases ("billion laughs") share nodes while parsed and expand
exponentially as soon as anything walks them (validation, a repr in an error message), and
deep nesting ends in a ``RecursionError``. :class:`BoundedLoader` refuses both while the
document is composed, before anything is expanded, and refuses duplicate keys, which
PyYAML otherwise resolves silently to the last one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ChangedetError, ConfigError, shown

#: larger files are refused unread: a config or manifest is a few kB
MAX_BYTES = 1_000_000
#: values (scalars, lists, mappings) of a document once its aliases are expanded
MAX_VALUES = 200_000
#: levels of nesting, aliases expanded
MAX_DEPTH = 64

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlRefused(yaml.MarkedYAMLError):
    """A document that parses but is refused; ``problem`` says why, ``fix`` what to do."""

    def __init__(self, problem: str, fix: str, mark: Any = None) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.fix = fix


class BoundedLoader(yaml.SafeLoader):
    """A :class:`yaml.SafeLoader` that refuses duplicate keys, deep nesting and alias bombs."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlRefused(f"nested more than {MAX_DEPTH} levels deep", "flatten it",
                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: set[tuple[str, str]] = set()
        for key, _ in node.value:
            if isinstance(key, ScalarNode) and key.tag != _MERGE_TAG:
                if (key.tag, key.value) in seen:
                    raise YamlRefused(f"key {shown(key.value)} appears twice", "keep one of them", key.start_mark)
                seen.add((key.tag, key.value))
        return node

    def compose_document(self) -> Node:
        node = super().compose_document()
        _check_expansion(node)
        return node


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: Node) -> None:
    """Refuse a node graph whose aliases expand past :data:`MAX_VALUES` or :data:`MAX_DEPTH`, or loop.

    Aliases make the graph a DAG (or a cycle); sizes and depths are computed once per node
    (iteratively, post-order), so the check costs as much as the document on disk, not as much
    as its expansion.
    """
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) expanded
    open_: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        key = id(node)
        if key in done:
            continue
        kids = _children(node)
        if not closing:
            if key in open_:
                raise YamlRefused("an alias refers to a value that contains it", "remove the recursive alias",
                                  node.start_mark)
            open_.add(key)
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in done)
            continue
        open_.discard(key)
        size = 1 + sum(done[id(k)][0] for k in kids)
        depth = 1 + max((done[id(k)][1] for k in kids), default=0)
        if size > MAX_VALUES:
            raise YamlRefused(f"its aliases expand to more than {MAX_VALUES} values",
                              "write it out without nested aliases", node.start_mark)
        if depth > MAX_DEPTH:
            raise YamlRefused(f"its aliases nest more than {MAX_DEPTH} levels deep", "flatten it", node.start_mark)
        done[key] = (size, depth)


def load_text(text: str) -> Any:
    """Parse one YAML document with :class:`BoundedLoader` (raises :class:`yaml.YAMLError`)."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: Path, what: str, error: type[ChangedetError] = ConfigError) -> Any:
    """The parsed content of a YAML file (config, batch or training manifest).

    A missing, unreadable, oversized or non-UTF-8 file, bad syntax, or a document refused by
    :class:`BoundedLoader` raises ``error`` with one line naming the file (and the line) and the fix.
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a folder, not a {what}; give the path of a YAML file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror}); check the path") from None
    if len(raw) > MAX_BYTES:
        raise error(f"{path}: larger than {MAX_BYTES // 1_000_000} MB, too large for a {what}; check the path")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}); give a YAML {what}") from None
    try:
        return load_text(text)
    except YamlRefused as exc:
        raise error(f"{path}: {exc.problem}{_line(exc)}; {exc.fix}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML{_line(exc)}; fix the {what}'s syntax") from None
    except RecursionError:  # a backstop: MAX_DEPTH keeps the composer well inside the limit
        raise error(f"{path}: nested too deeply; flatten the {what}") from None


def _line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}" if mark else ""
