"""Plain-text rendering of query results for the terminal (the CLI and the demo)."""
from __future__ import annotations


def format_result(columns: list[str], rows: list[tuple], max_rows: int = 50, width: int = 48) -> str:
    """A plain aligned table (cells cut at ``width`` characters, at most ``max_rows`` rows)."""
    def cell(v) -> str:
        text = "NULL" if v is None else str(v).replace("\n", " ")
        return text if len(text) <= width else text[: width - 1] + "…"

    shown = [[cell(v) for v in r] for r in rows[:max_rows]]
    head = [cell(c) for c in columns]
    widths = [max([len(head[i])] + [len(r[i]) for r in shown]) for i in range(len(columns))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in shown]
    more = len(rows) - len(shown)
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''}{f', {more} not shown' if more > 0 else ''})")
    return "\n".join(lines)
