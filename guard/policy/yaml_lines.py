"""YAML with line numbers, and bounded: every mapping and list remembers its lines, and a document that
would expand (aliases followed) past a size or depth limit is refused before it is built."""

from __future__ import annotations

import yaml

from guard.errors import PolicyError, first_line


class _Map(dict):
    """A mapping that remembers the line of itself and of each key."""

    line: int
    key_lines: dict


class _Seq(list):
    line: int
    item_lines: list


MAX_POLICY_BYTES = 16 * 1024 * 1024  # a policy file; big exemplar sets belong in data files
MAX_YAML_NODES = 1_000_000  # values after expanding aliases: a "billion laughs" stops here
MAX_YAML_DEPTH = 64


def _measure(root, display: str) -> None:
    """PolicyError if the document under `root` would expand, aliases followed, to more than
    MAX_YAML_NODES values or MAX_YAML_DEPTH levels, or holds an alias to a value that contains
    it. Measured on the node graph (an alias is the same node object again), each node once:
    a "billion laughs" is refused in milliseconds, before anything of it is built."""
    sizes: dict[int, int] = {}  # id(node): values it expands to, itself included
    heights: dict[int, int] = {}  # id(node): levels of values below it
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            children = _children(node)
            line = node.start_mark.line + 1
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            heights[key] = 1 + max(heights[id(child)] for child in children) if children else 0
            if sizes[key] > MAX_YAML_NODES:
                raise PolicyError(
                    f"{display}:{line}: the policy expands to more than {MAX_YAML_NODES:,} values "
                    "(aliases that repeat aliases?)"
                )
            if heights[key] >= MAX_YAML_DEPTH:
                raise PolicyError(f"{display}:{line}: values nested more than {MAX_YAML_DEPTH} deep")
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise PolicyError(f"{display}:{node.start_mark.line + 1}: an alias refers to the value that contains it")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(_children(node)))


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _build(node, loader, display: str):
    """The value of `node`, mappings and lists remembering their lines. Called after `_measure`,
    which bounds the size and depth and refuses self-referencing aliases, so the recursion ends."""
    if isinstance(node, yaml.MappingNode):
        result = _Map()
        result.line, result.key_lines = node.start_mark.line + 1, {}
        for key_node, value_node in node.value:
            key = _build(key_node, loader, display)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise PolicyError(f"{display}:{key_node.start_mark.line + 1}: a key must be a plain value")
            if key in result:
                raise PolicyError(f"{display}:{key_node.start_mark.line + 1}: duplicate key '{key}'")
            result[key] = _build(value_node, loader, display)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        result = _Seq(_build(item, loader, display) for item in node.value)
        result.line = node.start_mark.line + 1
        result.item_lines = [item.start_mark.line + 1 for item in node.value]
        return result
    return loader.construct_object(node, deep=True)


def parse_yaml(text: str, display: str):
    try:
        loader = yaml.SafeLoader(text)  # reads the first characters already: it can raise too
    except yaml.YAMLError as exc:
        raise PolicyError(f"{display}: invalid YAML: {first_line(exc)}") from exc
    try:
        node = loader.get_single_node()
        if node is None:
            raise PolicyError(f"{display}:1: the policy file is empty")
        _measure(node, display)  # the size first: building a billion laughs would take long
        return _build(node, loader, display)
    except RecursionError:
        raise PolicyError(f"{display}: values nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise PolicyError(f"{display}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:  # PyYAML's constructors raise these too
        raise PolicyError(f"{display}: invalid YAML: {first_line(exc)}") from exc
    finally:
        loader.dispose()
