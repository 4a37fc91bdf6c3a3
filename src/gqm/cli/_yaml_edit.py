"""Edit a YAML config file in place, keeping its comments and layout.

PyYAML has no round-trip mode, so each change is made twice: on the loaded data (the
truth) and as a targeted text edit located with the node positions of
:func:`yaml.compose`: replace a scalar, insert block lines after a mapping or a
sequence, delete a sequence item's lines. The edited text is accepted only if it loads
back to exactly the changed data; otherwise (non-empty flow collections, duplicate keys,
layouts the edits do not handle) the file is rewritten from the data (PyYAML's dumper),
and its comments are lost (:meth:`ConfigEditor.result` says which happened).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml
from yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode, SequenceNode

Path = list[str | int]


class _Dumper(yaml.SafeDumper):
    """Indents a list under its key (``key:\n  - item``), as gqm's template does."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _dump(value: Any) -> str:
    return yaml.dump(value, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


class _Unsupported(Exception):
    """A layout the targeted edits do not handle: fall back to a rewrite."""


class ConfigEditor:
    """Changes to one YAML document; :meth:`result` returns the new text."""

    def __init__(self, text: str) -> None:
        data = yaml.safe_load(text)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError("the file is not a YAML mapping")
        self.data: dict[str, Any] = data
        self._text: str | None = text

    def get(self, path: Path) -> Any:
        """The value at ``path``, or None if any step is missing."""
        value: Any = self.data
        for step in path:
            if isinstance(step, int):
                if not isinstance(value, list) or step >= len(value):
                    return None
            elif not isinstance(value, dict) or step not in value:
                return None
            value = value[step]
        return value

    def items(self, path: Path) -> list[Any]:
        """The list at ``path`` (empty if missing or null)."""
        value = self.get(path)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError(f"{_dotted(path)} is not a list")
        return value

    def set(self, path: Path, value: Any) -> None:
        """Set the scalar at ``path``, creating missing mappings on the way."""
        parent = self._parent(path[:-1])
        parent[path[-1]] = value
        self._edit(lambda text: _set_text(text, path, value))

    def append(self, path: Path, item: Any) -> None:
        """Append ``item`` to the sequence at ``path`` (created if missing or null)."""
        parent = self._parent(path[:-1])
        items = parent.get(path[-1])
        if items is None:
            parent[path[-1]] = items = []
        if not isinstance(items, list):
            raise ValueError(f"{_dotted(path)} is not a list")
        items.append(copy.deepcopy(item))
        self._edit(lambda text: _append_text(text, path, item))

    def remove(self, path: Path, index: int) -> None:
        """Remove item ``index`` of the sequence at ``path``."""
        del self.items(path)[index]
        self._edit(lambda text: _remove_text(text, path, index))

    def result(self) -> tuple[str, bool]:
        """The new text, and whether it kept the file's comments and layout."""
        if self._text is not None:
            try:
                if yaml.safe_load(self._text) == self.data:
                    return self._text, True
            except yaml.YAMLError:
                pass
        return _dump(self.data), False

    def _parent(self, path: Path) -> Any:
        """The container at ``path`` in the data, creating missing mappings."""
        node: Any = self.data
        for step in path:
            if isinstance(step, int):
                node = node[step]
                continue
            if node.get(step) is None:
                node[step] = {}
            node = node[step]
            if not isinstance(node, dict | list):
                raise ValueError(f"{_dotted(path)}: {step!r} is not a mapping")
        return node

    def _edit(self, change: Any) -> None:
        if self._text is None:
            return
        try:
            self._text = change(self._text)
        except (_Unsupported, yaml.YAMLError):
            self._text = None


def _dotted(path: Path) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in path).lstrip(".")


# -- text edits ----------------------------------------------------------------------------


def _walk(root: Node | None, path: Path) -> tuple[Node | None, int, int]:
    """Follow ``path`` from ``root``: the deepest node reached, how many steps were
    taken, and the column of the last key passed (-2 at the top)."""
    node, key_col = root, -2
    for i, step in enumerate(path):
        if isinstance(step, int):
            if not isinstance(node, SequenceNode) or step >= len(node.value):
                raise _Unsupported
            node = node.value[step]
            continue
        if not isinstance(node, MappingNode):
            return node, i, key_col
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.value == step:
                key_col, node = key.start_mark.column, value
                break
        else:
            return node, i, key_col
    return node, len(path), key_col


def _content_end(node: Node) -> int:
    """Where the node's own text ends (a block node's end mark lies at the next token,
    after any trailing comments and blank lines)."""
    if not isinstance(node, CollectionNode) or node.flow_style:
        return int(node.end_mark.index)
    if isinstance(node, MappingNode) and node.value:
        key, value = node.value[-1]
        return max(_content_end(key), _content_end(value))
    if isinstance(node, SequenceNode) and node.value:
        return _content_end(node.value[-1])
    return int(node.start_mark.index)


def _line_end(text: str, index: int) -> int:
    """The start of the line after the one holding ``index - 1``."""
    if index > 0 and text[index - 1] == "\n":
        return index
    newline = text.find("\n", index)
    return len(text) if newline < 0 else newline + 1


def _line_start(text: str, index: int) -> int:
    return text.rfind("\n", 0, index) + 1


def _block(value: Any, column: int) -> str:
    dumped = _dump(value)
    return "".join(" " * column + line for line in dumped.splitlines(keepends=True))


def _insert(text: str, index: int, block: str) -> str:
    if index == len(text) and text and not text.endswith("\n"):
        block = "\n" + block
    return text[:index] + block + text[index:]


def _is_empty(node: Node) -> bool:
    """A null scalar (``key:``) or an empty flow collection (``[]``, ``{}``)."""
    if isinstance(node, CollectionNode):
        return bool(node.flow_style) and not node.value
    return bool(node.tag == "tag:yaml.org,2002:null")


def _replace_empty(text: str, node: Node, block: str) -> str:
    """Put ``block`` on the lines after an empty value, removing the value itself."""
    start, end = int(node.start_mark.index), int(node.end_mark.index)
    text = _insert(text, _line_end(text, end), block)
    while start > 0 and text[start - 1] == " ":  # no trailing blanks after the key
        start -= 1
    return text[:start] + text[end:]


def _put_missing(text: str, node: Node | None, rest: Path, value: Any, key_col: int) -> str:
    """Add the keys ``rest`` (ending in ``value``) under ``node``, which lacks ``rest[0]``."""
    nested: Any = value
    for step in reversed(rest):
        if isinstance(step, int):
            raise _Unsupported
        nested = {step: nested}
    if node is None:  # an empty document
        return _insert(text, len(text), _block(nested, 0))
    if isinstance(node, MappingNode) and not node.flow_style and node.value:
        at = _line_end(text, _content_end(node))
        return _insert(text, at, _block(nested, node.start_mark.column))
    if _is_empty(node) and not isinstance(node, SequenceNode):
        return _replace_empty(text, node, _block(nested, key_col + 2))
    raise _Unsupported


def _set_text(text: str, path: Path, value: Any) -> str:
    node, taken, key_col = _walk(yaml.compose(text), path)
    if taken < len(path):
        return _put_missing(text, node, path[taken:], value, key_col)
    if not isinstance(node, ScalarNode):
        raise _Unsupported
    start, end = node.start_mark.index, node.end_mark.index
    return text[:start] + json.dumps(value) + text[end:]


def _append_text(text: str, path: Path, item: Any) -> str:
    node, taken, key_col = _walk(yaml.compose(text), path)
    if taken < len(path):
        return _put_missing(text, node, path[taken:], [item], key_col)
    assert node is not None
    if isinstance(node, SequenceNode) and not node.flow_style and node.value:
        at = _line_end(text, _content_end(node))
        return _insert(text, at, _block([item], node.start_mark.column))
    if _is_empty(node):
        return _replace_empty(text, node, _block([item], key_col + 2))
    raise _Unsupported


def _remove_text(text: str, path: Path, index: int) -> str:
    root = yaml.compose(text)
    node, taken, _ = _walk(root, path)
    if taken < len(path) or not isinstance(node, SequenceNode) or node.flow_style:
        raise _Unsupported
    if len(node.value) == 1:
        # The last item: the key's value becomes an empty list.
        key = _key_of(root, path)
        end = _line_end(text, _content_end(node))
        return text[: key.end_mark.index] + ": []\n" + text[end:]
    start = _line_start(text, node.value[index].start_mark.index)
    if index + 1 < len(node.value):
        end = _line_start(text, node.value[index + 1].start_mark.index)
    else:
        end = _line_end(text, _content_end(node.value[index]))
    return text[:start] + text[end:]


def _key_of(root: Node | None, path: Path) -> Node:
    """The key node naming the value at ``path``."""
    parent, taken, _ = _walk(root, path[:-1])
    if taken < len(path) - 1 or not isinstance(parent, MappingNode):
        raise _Unsupported
    for key, _value in parent.value:
        if isinstance(key, ScalarNode) and key.value == path[-1]:
            return key
    raise _Unsupported
