"""ASCII header lines in front of binary event data (AEDAT 2.0/3.1 ``#`` lines, Prophesee ``%`` lines)."""

from __future__ import annotations

from pathlib import Path

from pipelines.errors import BadInput


def split_header(
    path: str | Path, raw: bytes, prefix: bytes, end_line: bytes | None = None
) -> tuple[list[str], int]:
    """Header lines (without line ends) and the offset where the binary body starts.

    Lines are taken while they start with ``prefix``; with ``end_line`` the header must end
    with that exact line (AEDAT 3.1's ``#!END-HEADER``) and the body starts right after it.
    """
    lines: list[str] = []
    pos = 0
    while pos < len(raw) and raw.startswith(prefix, pos):
        newline = raw.find(b"\n", pos)
        if newline < 0:
            raise BadInput(path, "header line without a line end: truncated header")
        line = raw[pos : newline + 1]
        lines.append(line.rstrip(b"\r\n").decode("latin-1"))
        pos = newline + 1
        if end_line is not None and line.rstrip(b"\r\n") == end_line:
            return lines, pos
    if end_line is not None:
        raise BadInput(path, f"header does not end with {end_line.decode()!r}")
    return lines, pos
