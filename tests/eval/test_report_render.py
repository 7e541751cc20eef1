"""limbscan.eval.report_render: the HTML page says what the Markdown says, self-contained and escaped."""

from __future__ import annotations

import html
import re
from pathlib import Path

from limbscan.eval.report_blocks import Block, table
from limbscan.eval.report_render import to_html, to_markdown
from limbscan.eval.report_sections import SYNTHETIC_BANNER, report_blocks


def all_cells(md: str) -> set[str]:
    cells = set()
    for line in md.splitlines():
        if line.startswith("| ") and not set(line) <= set("|-: "):
            cells |= {c.strip() for c in line.strip("|").split(" | ") if c.strip()}
    return cells


def test_html_has_same_content_and_img_links(tmp_path, metrics):
    m = metrics(synthetic=True)
    figures = {"roc": tmp_path / "roc.png", "gallery": Path("gallery.png")}
    blocks = report_blocks(m, "limbscan evaluation", figures)
    page = to_html(blocks, "limbscan evaluation")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page), "HTML must be self-contained"
    text = html.unescape(page)
    missing = [c for c in all_cells(to_markdown(blocks)) if c not in text]
    assert not missing, missing
    assert SYNTHETIC_BANNER in text and text.index(SYNTHETIC_BANNER) < text.index("<table>")
    assert '<img src="roc.png"' in page and '<img src="gallery.png"' in page
    assert "undefined (no abnormal images)" in text and "0.031" in text


def test_cells_are_escaped_for_each_format():
    blocks = [Block("h1", "A & B"), Block("p", "x < y"), table(["name", "n"], [["a|b", "<1>"]])]
    md = to_markdown(blocks)
    assert md.startswith("# A & B\n\nx < y\n\n| name | n |\n|---|---:|\n") and "| a\\|b | <1> |" in md
    page = to_html(blocks, "t <1>")
    assert "<title>t &lt;1&gt;</title>" in page and "<h1>A &amp; B</h1>" in page
    assert '<td>a|b</td><td class="num">&lt;1&gt;</td>' in page
