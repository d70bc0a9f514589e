"""Render the Markdown in HumanReadable for a terminal: headers, aligned tables, links as `text <url>`."""

from __future__ import annotations

import re
import shutil
import textwrap

LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
HEADER = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
TABLE_SEPARATOR = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
EMPHASIS = re.compile(r"(\*\*|__)(.+?)\1")
LINE_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
MARKDOWN_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|])")
COLUMN_GAP = "  "
MIN_COLUMN_WIDTH = 8


def terminal_width() -> int:
    return shutil.get_terminal_size((100, 24)).columns


def render_markdown(text: str, width: int | None = None, color: bool = False) -> str:
    width = width or terminal_width()
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        if _starts_table(lines, i):
            end = i + 2
            while end < len(lines) and lines[end].strip().startswith("|"):
                end += 1
            out += render_table([_cells(lines[i])] + [_cells(row) for row in lines[i + 2:end]], width)
            i = end
            continue
        header = HEADER.match(lines[i])
        if header:
            out += _header(inline(header.group(2)), color)
        else:
            out.append(inline(lines[i]))
        i += 1
    return "\n".join(out).strip("\n")


def first_line(markdown: str, limit: int = 60) -> str:
    """The first non-empty line as plain text, shortened: for progress lines."""
    for line in markdown.splitlines():
        line = inline(HEADER.sub(r"\2", line)).strip().strip("|").strip()
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


def inline(text: str) -> str:
    def link(match: re.Match) -> str:
        label, url = match.group(1), match.group(2)
        return url if label in ("", url) else f"{label} <{url}>"

    text = LINK.sub(link, text)
    text = EMPHASIS.sub(r"\2", text)
    text = LINE_BREAK.sub("\n", text)
    return MARKDOWN_ESCAPE.sub(r"\1", text)


def render_table(rows: list[list[str]], width: int) -> list[str]:
    """Rows (first is the header) as aligned columns; long cells wrap so the table fits `width`."""
    ncols = max(len(r) for r in rows)
    rows = [r + [""] * (ncols - len(r)) for r in rows]
    widths = _fit_widths(rows, width - len(COLUMN_GAP) * (ncols - 1))
    out = _table_row(rows[0], widths)
    out.append(COLUMN_GAP.join("-" * w for w in widths).rstrip())
    for row in rows[1:]:
        out += _table_row(row, widths)
    return out


def _fit_widths(rows: list[list[str]], available: int) -> list[int]:
    widths = [max(_natural_width(r[c]) for r in rows) for c in range(len(rows[0]))]
    while sum(widths) > available:
        widest = max(range(len(widths)), key=widths.__getitem__)
        if widths[widest] <= MIN_COLUMN_WIDTH:
            break  # cannot fit: let the terminal wrap the rest
        widths[widest] -= 1
    return widths


def _natural_width(cell: str) -> int:
    return max((len(line) for line in cell.split("\n")), default=0)


def _table_row(cells: list[str], widths: list[int]) -> list[str]:
    wrapped = [_wrap(cell, w) for cell, w in zip(cells, widths, strict=True)]
    height = max(len(w) for w in wrapped)
    return [
        COLUMN_GAP.join((w[n] if n < len(w) else "").ljust(widths[c]) for c, w in enumerate(wrapped)).rstrip()
        for n in range(height)
    ]


def _wrap(cell: str, width: int) -> list[str]:
    lines: list[str] = []
    for part in cell.split("\n"):
        lines += textwrap.wrap(part, width, break_long_words=True, break_on_hyphens=False) or [""]
    return lines


def _starts_table(lines: list[str], i: int) -> bool:
    return (lines[i].strip().startswith("|") and i + 1 < len(lines)
            and "-" in lines[i + 1] and bool(TABLE_SEPARATOR.match(lines[i + 1].strip())))


def _cells(row: str) -> list[str]:
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return [inline(cell.strip()) for cell in re.split(r"(?<!\\)\|", row)]


def _header(text: str, color: bool) -> list[str]:
    if color:
        return ["", f"\x1b[1;4m{text}\x1b[0m"]
    return ["", text, "=" * len(text)]
