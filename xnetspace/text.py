"""Reading small input files safely, and quoting what they hold in short error messages.

Spec and space files (:mod:`xnetspace.spec`, :mod:`xnetspace.search.space`) come from users: a file
may be a device, huge, binary, a "billion laughs" YAML bomb, or repeat a key that YAML and JSON
readers would silently overwrite. :func:`read_text_file` and :func:`yaml_mapping` refuse each
with a :class:`~xnetspace.errors.SpecError` that names the problem; :func:`unique_pairs` is the
JSON counterpart of the repeated-key check; :func:`shorten` and :func:`short_repr` keep any
quoted value short whatever its size.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

__all__ = [
    "read_text_file",
    "yaml_mapping",
    "unique_pairs",
    "yaml_problem",
    "shorten",
    "short_repr",
    "reprlib_repr",
    "MAX_FILE_BYTES",
    "MAX_YAML_NODES",
    "SHORT_VALUE",
]

MAX_FILE_BYTES = 1 << 20  # spec and space files are a few hundred bytes; 1 MiB is generous
MAX_YAML_NODES = 100_000  # nodes after YAML aliases expand (a "billion laughs" file has 10^9)
SHORT_VALUE = 80  # characters of an offending value quoted in an error message


def shorten(text: str, limit: int = SHORT_VALUE) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when cut (error messages stay short
    whatever the input)."""
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def short_repr(value: Any, limit: int = SHORT_VALUE) -> str:
    """``repr(value)`` cut to ``limit`` characters. Long strings and containers are cut before
    ``repr`` sees all of them, so a huge value costs no more than a small one."""
    if isinstance(value, str):
        return shorten(repr(value[: limit + 1]), limit)
    if isinstance(value, (list, tuple)) and len(value) > limit:
        value = list(value[:limit])
    elif isinstance(value, dict) and len(value) > limit:
        value = dict(list(value.items())[:limit])
    return shorten(reprlib_repr(value), limit)


def reprlib_repr(value: Any) -> str:
    """``repr`` with nesting and lengths capped (``reprlib``): recursive or deep data stays short."""
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 3, 8, 8, 8, SHORT_VALUE, SHORT_VALUE
    return r.repr(value)


def read_text_file(path: str | Path, what: str) -> str:
    """The text of a small file (a spec, a space): at most ``MAX_FILE_BYTES``, UTF-8.

    Reads no more than the limit, so ``/dev/zero`` or a multi-gigabyte file is refused at once.

    Raises:
        SpecError: missing, unreadable, not a regular file, too large, or not UTF-8 text.
    """
    path = Path(path)
    try:
        if path.exists() and not path.is_file():
            raise SpecError(f"{what} {shorten(str(path))!r} is not a regular file")
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise SpecError(f"cannot read {what} {shorten(str(path))!r}: {err.strerror}") from err
    if len(data) > MAX_FILE_BYTES:
        raise SpecError(
            f"{what} {shorten(str(path))!r} is larger than {MAX_FILE_BYTES:,} bytes; "
            f"spec and space files are small YAML or JSON files"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"{what} {shorten(str(path))!r} is not UTF-8 text (byte {err.start})") from err


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """Nodes in ``node`` with every alias expanded, counted without expanding (shared nodes are
    counted once per use, from a memo), stopping early above ``limit``.

    Raises:
        SpecError: a node that contains itself (a recursive alias).
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise SpecError("a YAML alias refers to a node that contains it (recursive data)")
        open_nodes.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [item for pair in n.value for item in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(node)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_unique_keys(node: yaml.Node, what: str) -> None:
    """Refuse a mapping that repeats a key: ``yaml.safe_load`` silently keeps the last one, so
    ``depth: 2`` then ``depth: 4`` would build depth 4 with no word. Merge keys (``<<``) are not
    keys of their own. Walks each node once (aliases share nodes), without recursion.

    Raises:
        SpecError: the first repeated key, with the lines of both (1-based).
    """
    stack, seen_nodes = [node], set()
    while stack:
        current = stack.pop()
        if id(current) in seen_nodes:
            continue
        seen_nodes.add(id(current))
        if isinstance(current, yaml.MappingNode):
            first: dict[tuple[str, str], yaml.Node] = {}
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                    earlier = first.setdefault((key.tag, key.value), key)
                    if earlier is not key:
                        lines = (earlier.start_mark.line + 1, key.start_mark.line + 1)
                        where = (
                            f"twice on line {lines[0]}"
                            if lines[0] == lines[1]
                            else f"on lines {lines[0]} and {lines[1]}"
                        )
                        raise SpecError(
                            f"{what} repeats the key {shorten(key.value, 40)!r} in one mapping, {where}; "
                            f"YAML would keep only the last one without a word: remove one of them"
                        )
                stack.extend((key, value))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def yaml_mapping(text: str, what: str) -> dict:
    """``yaml.safe_load`` of a file that must hold a mapping (a spec, a space).

    The document is composed first and its size with every alias expanded is checked
    (at most ``MAX_YAML_NODES`` nodes), so a "billion laughs" file is refused before it is built,
    and a mapping that repeats a key is refused (``safe_load`` would keep the last one silently).

    Raises:
        SpecError: too long, not YAML, too large once aliases expand, a repeated key (named, with
            its lines), or not a mapping.
    """
    if len(text) > MAX_FILE_BYTES:
        raise SpecError(f"{what} of {len(text):,} characters is too long (at most {MAX_FILE_BYTES:,})")
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters here already
        node = loader.get_single_node()
        if node is not None:
            nodes = _expanded_size(node, MAX_YAML_NODES)
            if nodes > MAX_YAML_NODES:
                raise SpecError(
                    f"{what} has more than {MAX_YAML_NODES:,} YAML values once its aliases "
                    f"(*name) are expanded; spec and space files have a few hundred"
                )
        if node is not None:
            _check_unique_keys(node, what)
        data = None if node is None else loader.construct_document(node)
    except SpecError:
        raise
    except (yaml.YAMLError, ValueError, TypeError) as err:  # ValueError: an int of 5,000 digits
        raise SpecError(f"not valid YAML: {yaml_problem(err)}") from err
    except RecursionError:  # nesting deeper than Python's stack: no spec is like that
        raise SpecError(f"{what} is nested too deeply to be a spec or space file") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise SpecError(f"{what} must be a mapping of fields, got {type(data).__name__}")
    return data


def yaml_problem(err: Exception) -> str:
    """A YAML reader's error on one line: its problem with the line and column (1-based) where it
    was found, then what the reader was doing and where that began (PyYAML prints these over 4-8
    lines, each position followed by the source line and a caret under the column)."""

    def at(mark: yaml.Mark | None) -> str:
        return "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"

    if isinstance(err, yaml.MarkedYAMLError) and (err.problem or err.context):
        text = f"{err.problem or err.context}{at(err.problem_mark if err.problem else err.context_mark)}"
        if err.problem and err.context:
            text += f" ({err.context}{at(err.context_mark)})"
    else:  # the reader's "unacceptable character #x0007 ... in "<unicode string>", position 7"
        text = str(err).replace(' in "<unicode string>",', " at")
    return shorten(" ".join(text.split()), 400)


def unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook``: a dict, refusing a key that an object repeats
    (``json.loads`` alone keeps the last one silently).

    Raises:
        SpecError: the repeated key, named.
    """
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise SpecError(
                f"the key {shorten(key, 40)!r} appears twice in one JSON object; JSON readers keep "
                f"only the last one without a word: remove one of them"
            )
        data[key] = value
    return data
