"""Small inline SVG charts for report.html: no plotting library, no script, no network."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 640, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 56, 12, 12, 36
COLORS = {"ok": "#2e7d32", "bad": "#c62828", "line": "#1565c0", "bar": "#546e7a"}


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2g}"


def _frame(body: list[str], label: str, height: int = HEIGHT) -> str:
    return (
        f'<svg class="chart" role="img" aria-label="{escape(label)}" viewBox="0 0 {WIDTH} '
        f'{height}" width="{WIDTH}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(body)
        + "</svg>"
    )


def _axes(top: float, x_labels: Sequence[tuple[float, str]], y_title: str) -> list[str]:
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    parts = [
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{PAD_TOP + plot_h}" '
        'stroke="#999"/>',
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP + plot_h}" x2="{WIDTH - PAD_RIGHT}" '
        f'y2="{PAD_TOP + plot_h}" stroke="#999"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = PAD_TOP + plot_h * (1 - fraction)
        parts.append(
            f'<text x="{PAD_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{_number(top * fraction)}</text>"
        )
    for x, text in x_labels:
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - PAD_BOTTOM + 14}" text-anchor="middle" '
            f'font-size="11">{escape(text)}</text>'
        )
    parts.append(
        f'<text x="12" y="{PAD_TOP + plot_h / 2:.1f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {PAD_TOP + plot_h / 2:.1f})">{escape(y_title)}</text>'
    )
    return parts


def _x_ticks(count: int, labels: Sequence[str], step_width: float) -> list[tuple[float, str]]:
    if not labels:
        return []
    every = max(1, len(labels) // 6)
    return [
        (PAD_LEFT + step_width * (i + 0.5), labels[i])
        for i in range(0, min(count, len(labels)), every)
    ]


def line_chart(values: Sequence[float], x_labels: Sequence[str], y_title: str) -> str:
    """One series over equal time steps."""
    if not values:
        return '<p class="empty">no data</p>'
    top = max(values) or 1.0
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    step = plot_w / len(values)
    points = " ".join(
        f"{PAD_LEFT + step * (i + 0.5):.1f},{PAD_TOP + plot_h * (1 - v / top):.1f}"
        for i, v in enumerate(values)
    )
    body = _axes(top, _x_ticks(len(values), x_labels, step), y_title)
    body.append(
        f'<polyline fill="none" stroke="{COLORS["line"]}" stroke-width="2" points="{points}"/>'
    )
    for point in points.split():
        x, y = point.split(",")
        body.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{COLORS["line"]}"/>')
    return _frame(body, y_title)


def stacked_bars(
    good: Sequence[int], bad: Sequence[int], x_labels: Sequence[str], y_title: str
) -> str:
    """Successes (green, below) and failures (red, above) per time step."""
    if not good:
        return '<p class="empty">no data</p>'
    top = max(g + b for g, b in zip(good, bad, strict=True)) or 1
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    step = plot_w / len(good)
    body = _axes(top, _x_ticks(len(good), x_labels, step), y_title)
    for i, (g, b) in enumerate(zip(good, bad, strict=True)):
        x = PAD_LEFT + step * i + step * 0.1
        g_h, b_h = plot_h * g / top, plot_h * b / top
        base = PAD_TOP + plot_h
        body.append(
            f'<rect x="{x:.1f}" y="{base - g_h:.1f}" width="{step * 0.8:.1f}" '
            f'height="{g_h:.1f}" fill="{COLORS["ok"]}"><title>{g} ok</title></rect>'
        )
        body.append(
            f'<rect x="{x:.1f}" y="{base - g_h - b_h:.1f}" width="{step * 0.8:.1f}" '
            f'height="{b_h:.1f}" fill="{COLORS["bad"]}"><title>{b} failed</title></rect>'
        )
    return _frame(body, y_title)


def histogram(counts: Sequence[int], edges: Sequence[float], x_title: str) -> str:
    """Counts per bin; `edges` has one more value than `counts`."""
    if not counts or not sum(counts):
        return '<p class="empty">no data</p>'
    top = max(counts)
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    step = plot_w / len(counts)
    labels = [(PAD_LEFT + step * i, _number(edges[i])) for i in range(0, len(edges), 4)]
    body = _axes(top, labels, "images")
    for i, count in enumerate(counts):
        h = plot_h * count / top
        body.append(
            f'<rect x="{PAD_LEFT + step * i + 1:.1f}" y="{PAD_TOP + plot_h - h:.1f}" '
            f'width="{max(step - 2, 1):.1f}" height="{h:.1f}" fill="{COLORS["bar"]}">'
            f"<title>{_number(edges[i])}–{_number(edges[i + 1])}: {count}</title></rect>"
        )
    body.append(
        f'<text x="{PAD_LEFT + plot_w / 2:.1f}" y="{HEIGHT - 4}" text-anchor="middle" '
        f'font-size="11">{escape(x_title)}</text>'
    )
    return _frame(body, x_title)


def bar_list(items: Sequence[tuple[str, int]], color: str = "bar") -> str:
    """Horizontal bars with their labels: failure reasons, classes."""
    if not items:
        return '<p class="empty">none</p>'
    top = max(count for _, count in items) or 1
    row, label_w = 20, 240
    height = row * len(items) + 8
    body = []
    for i, (label, count) in enumerate(items):
        y = 4 + row * i
        w = (WIDTH - label_w - 70) * count / top
        short = label if len(label) <= 36 else label[:35] + "…"
        body.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" font-size="12">'
            f"<title>{escape(label)}</title>{escape(short)}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{max(w, 1):.1f}" height="{row - 6}" '
            f'fill="{COLORS[color]}"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 14}" font-size="12">{count:,}</text>'
        )
    return _frame(body, "bars", height)
