"""The report's document (:mod:`.document`) as Markdown (a pull-request comment) or as a standalone HTML page."""

from __future__ import annotations

import base64
import html
import re

from pipeline.review.diff import Review
from pipeline.review.document import Block, Bullets, Details, Heading, Images, Para, Table, document

MARKER = "<!-- cnn-pipeline-review -->"  # finds the pull-request comment to update in place

_INLINE = re.compile(r"`([^`]*)`|\*\*(.+?)\*\*|(<sub>|</sub>)")


def _inline_html(text: str) -> str:
    """`code`, **bold** and <sub> of the inline markup as HTML; everything else escaped."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos : m.start()], quote=False))
        if m.group(1) is not None:
            out.append(f"<code>{html.escape(m.group(1), quote=False)}</code>")
        elif m.group(2) is not None:
            out.append(f"<b>{_inline_html(m.group(2))}</b>")
        else:
            out.append(m.group(3))
        pos = m.end()
    out.append(html.escape(text[pos:], quote=False))
    return "".join(out)


# --------------------------------------------------------------------------- Markdown


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _to_md(blocks: list[Block]) -> list[str]:
    lines: list[str] = []
    for b in blocks:
        match b:
            case Heading(level, text):
                lines += ["#" * level + " " + text, ""]
            case Para(text):
                lines += [text, ""]
            case Bullets(items):
                lines += [f"- {item}" for item in items] + [""]
            case Table(header, rows):
                lines += [_md_row(header), "|" + "---|" * len(header), *map(_md_row, rows), ""]
            case Details(summary, inner):
                # GitHub renders Markdown inside <details> after a blank line; the summary must be HTML
                lines += ["<details>", f"<summary>{_inline_html(summary)}</summary>", "", *_to_md(inner), "</details>", ""]
            case Images():
                pass  # a PR comment cannot embed images; the HTML report has them
            case _:  # pragma: no cover
                raise TypeError(b)
    return lines


def render_md(review: Review) -> str:
    """Markdown for a pull-request comment (starts with :data:`MARKER`)."""
    return MARKER + "\n" + "\n".join(_to_md(document(review))).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- HTML


def _figure(side: str, caption: str, png: bytes) -> str:
    src = f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}"
    img = f'<img alt="{html.escape(f"{side} {caption}")}" src="{src}">'
    return f"<figure>{img}<figcaption>{side}: {html.escape(caption)}</figcaption></figure>"


def _html_row(cells: list[str], tag: str) -> str:
    return "<tr>" + "".join(f"<{tag}>{_inline_html(c)}</{tag}>" for c in cells) + "</tr>"


def _to_html(blocks: list[Block]) -> list[str]:
    out: list[str] = []
    for b in blocks:
        match b:
            case Heading(level, text):
                out.append(f"<h{level}>{_inline_html(text)}</h{level}>")
            case Para(text):
                out.append(f"<p>{_inline_html(text)}</p>")
            case Bullets(items):
                out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in items) + "</ul>")
            case Table(header, rows):
                body = "".join(_html_row(row, "td") for row in rows)
                out.append(f"<table><thead>{_html_row(header, 'th')}</thead><tbody>{body}</tbody></table>")
            case Details(summary, inner):
                out += [f"<details><summary>{_inline_html(summary)}</summary>", *_to_html(inner), "</details>"]
            case Images(items):
                for caption, *pngs in items:
                    figures = [_figure(side, caption, png) for side, png in zip(("base", "head"), pngs) if png is not None]
                    out.append('<div class="plots">' + "".join(figures) + "</div>")
            case _:  # pragma: no cover
                raise TypeError(b)
    return out


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #1f2328; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: left; }
th { background: #f6f8fa; }
code { background: #f6f8fa; padding: 0 .2em; }
details { margin: .4em 0; padding: .3em .6em; border: 1px solid #d0d7de; border-radius: 6px; }
summary { cursor: pointer; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; }
figure img { max-width: 34em; border: 1px solid #d0d7de; }
"""


def render_html(review: Review) -> str:
    """A standalone HTML page: the Markdown report's content with the PNG plots embedded (base64)."""
    title = html.escape(f"Pipeline review: {review.base} → {review.head}")
    body = "\n".join(_to_html(document(review, images=True)))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n{MARKER}\n{body}\n</body></html>\n"
    )
