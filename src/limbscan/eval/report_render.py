"""Report blocks (:mod:`.report_blocks`) rendered as Markdown and as one self-contained HTML page."""

from __future__ import annotations

import html

from limbscan.eval.report_blocks import Block


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out += ["#" * int(b.kind[1]) + " " + b.text, ""]
        elif b.kind == "banner":
            out += [f"> **{b.text}**", ""]
        elif b.kind == "p":
            out += [b.text, ""]
        elif b.kind == "table":
            out.append("| " + " | ".join(map(_md_cell, b.header)) + " |")
            out.append("|" + "|".join("---:" if num else "---" for num in b.numeric) + "|")
            out += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b.rows]
            out.append("")
        elif b.kind == "figure":
            out += [f"![{b.header[0]}]({b.text})", "", f"*{b.header[0]}.*", ""]
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 70em; margin: 2em auto;
       padding: 0 1em; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.1em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.banner { background: #fff3cd; border: 2px solid #e0a800; padding: 0.8em 1em; font-weight: bold; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
@media print { body { max-width: none; } h2 { page-break-after: avoid; } table, figure { page-break-inside: avoid; } }
"""


def to_html(blocks: list[Block], title: str) -> str:
    """One page: styles inline, figures as ``<img>`` links, nothing fetched from elsewhere."""

    def e(text: str) -> str:
        return html.escape(text, quote=False)  # text nodes; attributes below use quote=True

    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
    ]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{e(b.text)}</{b.kind}>")
        elif b.kind == "banner":
            out.append(f'<div class="banner" role="alert">{e(b.text)}</div>')
        elif b.kind == "p":
            out.append(f"<p>{e(b.text)}</p>")
        elif b.kind == "table":
            out.append("<table>")
            out.append("<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in b.header) + "</tr></thead>")
            out.append("<tbody>")
            for row in b.rows:
                cells = "".join(
                    f'<td class="num">{e(c)}</td>' if num else f"<td>{e(c)}</td>" for c, num in zip(row, b.numeric)
                )
                out.append(f"<tr>{cells}</tr>")
            out.append("</tbody></table>")
        elif b.kind == "figure":
            out.append(
                f'<figure><img src="{html.escape(b.text)}" alt="{html.escape(b.header[0])}">'
                f"<figcaption>{e(b.header[0])}</figcaption></figure>"
            )
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
