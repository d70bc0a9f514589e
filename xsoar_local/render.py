"""Render the Markdown in HumanReadable for a terminal: headers, aligned tables, links as `text <url>`."""

from __future__ import annotations

import re
import shutil

LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
HEADER = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
TABLE_SEPARATOR = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
EMPHASIS = re.compile(r"(\*\*|__)(.+?)\1")
LINE_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
MARKDOWN_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|])")
COLUMN_GAP = "  "
MIN_COLUMN_WIDTH = 10
WHITESPACE = re.compile(r"\s")


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
            return shorten(line, limit)
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
    """Rows (first is the header) as aligned columns that fit `width`, one line per row (more only where a
    cell has line breaks). Identifiers - cells without spaces, such as machine ids and hashes - are never
    cut or wrapped, so they can be copied; free text is shortened with "…"; columns that still do not fit
    are left out, and a last line names them."""
    ncols = max(len(r) for r in rows)
    rows = [r + [""] * (ncols - len(r)) for r in rows]
    natural = [max(_natural_width(r[c]) for r in rows) for c in range(ncols)]
    narrowest = [_narrowest(rows, c, natural[c]) for c in range(ncols)]
    shown = _columns_that_fit(narrowest, width)
    widths = _shrink_free_text({c: natural[c] for c in shown}, narrowest, width)
    out = _table_row([rows[0][c] for c in shown], [widths[c] for c in shown])
    out.append(COLUMN_GAP.join("-" * widths[c] for c in shown).rstrip())
    for row in rows[1:]:
        out += _table_row([row[c] for c in shown], [widths[c] for c in shown])
    hidden = [rows[0][c] or f"column {c + 1}" for c in range(ncols) if c not in shown]
    if hidden:
        out.append(f"({len(hidden)} more column(s) not shown: {', '.join(hidden)}; widen the terminal or use --json)")
    return out


def _narrowest(rows: list[list[str]], column: int, natural: int) -> int:
    """How narrow a column may get: identifiers keep their full width, free text goes down to a few characters."""
    cells = [row[column] for row in rows[1:]]
    if all(not WHITESPACE.search(cell.replace("\n", "")) for cell in cells):
        return max([_natural_width(cell) for cell in cells] + [min(natural, MIN_COLUMN_WIDTH)])
    return min(natural, MIN_COLUMN_WIDTH)


def _columns_that_fit(narrowest: list[int], width: int) -> list[int]:
    shown = list(range(len(narrowest)))
    while len(shown) > 1 and sum(narrowest[c] for c in shown) + len(COLUMN_GAP) * (len(shown) - 1) > width:
        shown.pop()  # the plugins put the most telling columns first
    return shown


def _shrink_free_text(widths: dict[int, int], narrowest: list[int], width: int) -> dict[int, int]:
    available = width - len(COLUMN_GAP) * (len(widths) - 1)
    while sum(widths.values()) > available:
        shrinkable = [c for c in widths if widths[c] > narrowest[c]]
        if not shrinkable:
            break  # one identifier column wider than the terminal: let the terminal wrap it
        widest = max(shrinkable, key=widths.__getitem__)
        widths[widest] -= 1
    return widths


def _natural_width(cell: str) -> int:
    return max((len(line) for line in cell.split("\n")), default=0)


def _table_row(cells: list[str], widths: list[int]) -> list[str]:
    lines = [[shorten(line, w) for line in cell.split("\n")] for cell, w in zip(cells, widths, strict=True)]
    height = max(len(cell_lines) for cell_lines in lines)
    return [
        COLUMN_GAP.join((cell_lines[n] if n < len(cell_lines) else "").ljust(widths[c])
                        for c, cell_lines in enumerate(lines)).rstrip()
        for n in range(height)
    ]


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


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
