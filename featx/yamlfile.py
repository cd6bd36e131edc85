"""The one YAML reader for what users hand featx (modelsets, chart values and the run config
rendered from them): safe types only, and bounded work for any input.

YAML aliases let a few hundred bytes stand for billions of nodes ("billion laughs"): PyYAML builds
them as shared objects, so the load itself is cheap, but anything that walks or prints the result
(a check, an error message) is not. A document whose aliases add more than ``MAX_ALIAS_NODES``
nodes to it, or that uses more than ``MAX_ALIASES`` aliases, is refused before it is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from featx.errors import UsageError

#: Aliases (``*name``) in one document: modelsets and values use a few, if any.
MAX_ALIASES = 1000
#: Nodes that aliases may add to a document once expanded (the document's own nodes do not count:
#: a 10^6-entry modelset is fine, a 300-byte alias bomb is not).
MAX_ALIAS_NODES = 100_000

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10^6 entries in seconds


def _graph_size(root: yaml.Node) -> tuple[int, int, int]:
    """(nodes, aliases, nodes with every alias expanded) of the graph under ``root``, in linear
    time: an alias is the same node object reached again, an edge beyond a tree's ``nodes - 1``."""
    size: dict[int, int] = {}
    edges = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # post-order without recursion: a deeply nested document is fine
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        kids = _children(node)
        if not children_done:
            edges += len(kids)
        if children_done or not kids:
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            continue
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in size)
    return len(size), edges - (len(size) - 1), size[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(text: str, source: str | Path) -> Any:
    """The document in ``text`` (from ``source``, named in errors) as plain Python data."""
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise UsageError(f"{source}: not valid YAML ({e.__class__.__name__}{where}); fix the file") from None
        except RecursionError:
            raise UsageError(f"{source}: YAML nested too deeply; fix the file") from None
        if node is None:
            return None
        nodes, aliases, expanded = _graph_size(node) if "*" in text else (0, 0, 0)  # no '*': no alias
        if aliases > MAX_ALIASES:
            raise UsageError(f"{source}: {aliases:,} YAML aliases (more than {MAX_ALIASES:,}); write the entries out")
        if expanded - nodes > MAX_ALIAS_NODES:
            raise UsageError(f"{source}: YAML aliases expand to {expanded:,} nodes (more than {MAX_ALIAS_NODES:,} "
                             "added by aliases: an alias bomb?); write the entries out")
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as e:
            raise UsageError(f"{source}: not valid YAML ({e.__class__.__name__}); fix the file") from None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> Any:
    """``load_yaml`` of the file at ``path`` (UTF-8)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
    return load_yaml(text, path)
