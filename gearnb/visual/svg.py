"""Hand-written SVG: the few elements the pictures of :mod:`gearnb.visual` are made of.

Every picture builds a list of element strings with these functions and closes it with
:func:`document`. Text is escaped here, once; coordinates are rounded to 0.1 px so the
output stays small and diff-able. No dependency: the result is plain XML text.
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

FONT = "ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace"
# Width of one character of FONT at 1 px font size, to lay out text without a renderer
# (DejaVu Sans Mono's advance is 0.602 em; the other monospace fonts are within 2% of it).
CHAR_WIDTH = 0.602

# One palette for all pictures, chosen to stay readable in light and dark Jupyter themes.
COLOURS = {
    "ink": "#24292f",
    "muted": "#6e7781",
    "grid": "#d0d7de",
    "server": "#8250df",
    "client": "#0969da",
    "worker": "#1a7f37",
    "admin": "#6e7781",
    "ok": "#2da44e",
    "fail": "#cf222e",
    "status": "#bf8700",
    "sleep": "#8c959f",
    "high": "#cf222e",
    "normal": "#0969da",
    "low": "#6e7781",
    "background": "#ffffff",
}


def text_width(text: str, size: float) -> float:
    """The width ``text`` takes in FONT at ``size`` px."""
    return len(text) * size * CHAR_WIDTH


def fit(text: str, width: float, size: float) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` px at ``size`` px."""
    room = int(width / (size * CHAR_WIDTH))
    if len(text) <= room:
        return text
    return text[:max(room - 1, 0)] + "…"


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _attrs(attrs: dict[str, object]) -> str:
    return "".join(f" {key.rstrip('_').replace('_', '-')}={quoteattr(str(value))}" for key, value in attrs.items()
                   if value is not None)


def text(x: float, y: float, content: str, *, size: float = 11, title: str | None = None,
         **attrs: object) -> str:
    """A text element (``anchor=`` sets text-anchor); ``title`` becomes its tooltip."""
    anchor = attrs.pop("anchor", None)
    extra = _attrs({"text_anchor": anchor, **attrs})
    tip = f"<title>{escape(title)}</title>" if title else ""
    return f'<text x="{_n(x)}" y="{_n(y)}" font-size="{_n(size)}"{extra}>{tip}{escape(content)}</text>'


def line(x1: float, y1: float, x2: float, y2: float, **attrs: object) -> str:
    return f'<line x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}"{_attrs(attrs)}/>'


def rect(x: float, y: float, width: float, height: float, *, title: str | None = None, **attrs: object) -> str:
    tip = f"<title>{escape(title)}</title>" if title else ""
    body = f'x="{_n(x)}" y="{_n(y)}" width="{_n(max(width, 0))}" height="{_n(max(height, 0))}"{_attrs(attrs)}'
    return f"<rect {body}>{tip}</rect>" if tip else f"<rect {body}/>"


def polygon(points: list[tuple[float, float]], **attrs: object) -> str:
    coords = " ".join(f"{_n(x)},{_n(y)}" for x, y in points)
    return f'<polygon points="{coords}"{_attrs(attrs)}/>'


def group(elements: list[str], *, title: str | None = None, **attrs: object) -> str:
    tip = f"<title>{escape(title)}</title>" if title else ""
    return f"<g{_attrs(attrs)}>{tip}{''.join(elements)}</g>"


def document(width: float, height: float, elements: list[str], *, label: str) -> str:
    """A standalone SVG document (``label``: its accessible name)."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(width)}" height="{_n(height)}" '
            f'viewBox="0 0 {_n(width)} {_n(height)}" role="img" aria-label={quoteattr(label)} '
            f'font-family={quoteattr(FONT)} fill="{COLOURS["ink"]}">'
            f'<rect width="100%" height="100%" fill="{COLOURS["background"]}"/>'
            + "".join(elements) + "</svg>")


def scrollable(svg: str, max_height: int = 640) -> str:
    """HTML showing ``svg`` in a box that scrolls when the picture is taller than ``max_height``."""
    return f'<div style="max-height:{max_height}px;overflow:auto;max-width:100%">{svg}</div>'
