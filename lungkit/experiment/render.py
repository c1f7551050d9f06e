"""Renders report blocks to Markdown and to self-contained HTML (figures embedded).

A block is `(kind, payload)`: "h1"/"h2" with a title, "p" with text (Markdown `**bold**`
only), "table" with `(header, rows)`, "figure" with `(png_path, caption)`. Both renderers
take the same list, so report.md and report.html never disagree.
"""

import base64
import html
from pathlib import Path


def _inline(text):
    """Markdown bold (**x**) to HTML, everything else escaped."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def render_markdown(blocks, base):
    lines = []
    for kind, payload in blocks:
        if kind == "h1":
            lines += [f"# {payload}", ""]
        elif kind == "h2":
            lines += [f"## {payload}", ""]
        elif kind == "p":
            lines += [payload, ""]
        elif kind == "table":
            header, rows = payload
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"
                      for row in rows]
            lines.append("")
        elif kind == "figure":
            path, caption = payload
            lines += [f"![{caption}]({Path(path).relative_to(base).as_posix()})", "",
                      f"*{caption}*", ""]
    return "\n".join(lines)


HTML_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.35em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.PASS { color: #0a6b2d; font-weight: bold; } td.FAIL { color: #a11; font-weight: bold; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-style: italic; color: #555; }
"""


def render_html(blocks):
    body = []
    for kind, payload in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(payload)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(payload)}</p>")
        elif kind == "table":
            header, rows = payload
            body.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                        + "</tr>")
            for row in rows:
                cells = "".join(f'<td class="{html.escape(str(c))}">{html.escape(str(c))}</td>'
                                for c in row)
                body.append(f"<tr>{cells}</tr>")
            body.append("</table>")
        elif kind == "figure":
            path, caption = payload
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" '
                        f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
                        "</figcaption></figure>")
    title = html.escape(blocks[0][1]) if blocks and blocks[0][0] == "h1" else "lungkit report"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{HTML_STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
