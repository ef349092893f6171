"""JSON Lines reading: one JSON value per line, lines split at ``"\\n"`` only.

Not ``str.splitlines()``: it also splits at U+2028, U+2029, U+0085 and other separators, which
``json.dumps(..., ensure_ascii=False)`` leaves raw inside strings, so a reply holding one would be cut
in two halves that are not JSON.
"""

import json
from collections.abc import Iterator


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number from 1, line)`` of every non-blank line of ``text``."""
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield number, line


def located(error: json.JSONDecodeError, path: str, line: int) -> ValueError:
    """``error`` as one line naming the file and the line."""
    return ValueError(f"{path}, line {line}: not valid JSON ({error.msg} at column {error.colno}).")


def parse_jsonl(text: str, path: str) -> list:
    """The values of the non-blank lines of ``text`` (read from ``path``); a malformed line raises
    ``ValueError`` naming the file and the line."""
    records = []
    for number, line in jsonl_lines(text):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise located(e, path, number) from None
    return records


def read_jsonl(path: str) -> list:
    """The values of the JSONL file ``path`` (UTF-8); see :func:`parse_jsonl`."""
    with open(path, encoding="utf-8", newline="") as f:  # newline="": no translation, lines end at "\n"
        return parse_jsonl(f.read(), path)
