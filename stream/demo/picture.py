"""A picture of rings for people: one self-contained HTML page, a drawing and a table per ring.

Each ring is a circle of accounts with one curved arrow per payment, numbered
in time order (1 is the earliest, the highest number the payment that closed
the ring) and labelled with its amount, currency and date; the two payments of
a 2-hop ring curve apart, one above and one below. Hovering a payment — its
arrow, label or table row — highlights it everywhere and shows every detail
(accounts, amount, time, transaction id); hovering an account shows its full id.

Hand-written SVG, not a drawing library: a ring's layout is a circle, and what
matters is the placement rules a general graph layout does not know (arrows
that curve apart, labels pushed clear of circles and of each other, numbering
by time). Graphviz needs a system binary, and the JavaScript libraries (d3,
vis-network via pyvis, plotly) would either load from the network — the page
must open offline, e.g. attached to a case file — or inline hundreds of KB.

Label boxes are sized from an over-estimate of the text's width, so the
real text (any sans-serif font) fits inside them; `tests/test_picture.py`
checks the geometry in headless Chromium.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ringwatch.graph import Alert, Transaction

from ..display import alert_total, money, moment

_NODE_RADIUS = 30
_BADGE_RADIUS = 9
_LABEL_FONT = 11
_LINE_HEIGHT = 14
_PAD = 4  # inside a label's box, around its text
_CLEAR = 6  # between a label and anything else
_MARGIN = 12  # around the drawing

_STYLE = """
body{font-family:Arial,Helvetica,sans-serif;margin:24px;color:#222}
figure{display:inline-block;vertical-align:top;margin:8px;border:1px solid #ccc;border-radius:8px;padding:12px}
figcaption{font-size:13px;max-width:520px;line-height:1.45}
figcaption code{font-size:12px}
svg text{font-family:Arial,Helvetica,sans-serif}
.payment path{fill:none;stroke:#b22;stroke-width:2}
.payment.hot path{stroke:#e60;stroke-width:4}
.payment.hot .hop-badge circle{fill:#e60}
.pay-label rect{fill:#fff;fill-opacity:.9;stroke:#ddd}
.pay-label.hot rect{stroke:#e60;stroke-width:2}
.hop-badge circle{fill:#b22}
.hop-badge text{fill:#fff;font-size:10px;font-weight:bold}
circle.account{fill:#eef;stroke:#335}
table{border-collapse:collapse;font-size:12px;margin-top:8px}
td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #eee}
td.amount{text-align:right;white-space:nowrap}
tr.hot{background:#fde3d0}
"""

# Hovering one part of a payment (arrow, label, table row) highlights all of them.
_SCRIPT = """
document.querySelectorAll('[data-hop]').forEach(function (part) {
  var figure = part.closest('figure'), hop = part.getAttribute('data-hop');
  part.addEventListener('mouseenter', function () {
    figure.querySelectorAll('[data-hop="' + hop + '"]').forEach(function (p) { p.classList.add('hot'); });
  });
  part.addEventListener('mouseleave', function () {
    figure.querySelectorAll('.hot').forEach(function (p) { p.classList.remove('hot'); });
  });
});
"""


def render_rings_html(
    alerts: Sequence[Alert],
    transactions: Mapping[str, Transaction],
    path: str | Path,
    *,
    title: str = "ringwatch: rings found",
    limit: int = 6,
) -> Path:
    """Write the `limit` largest rings (by total amount) to `path` and return it.

    `transactions` maps tx_id to the transaction, for the amount, currency and
    time of each payment; a payment it lacks is drawn and marked unknown.
    """
    top = sorted(alerts, key=lambda a: a.total_amount, reverse=True)[:limit]
    figures = "\n".join(_figure(rank, alert, transactions) for rank, alert in enumerate(top, 1))
    page = (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{len(alerts)} rings found; the {len(top)} largest by amount. Payments are numbered in time order "
        "(the highest number closed the ring); times are UTC. Hover a payment or an account for details.</p>"
        f"{figures}<script>{_SCRIPT}</script></body></html>\n"
    )
    target = Path(path)
    target.write_text(page, encoding="utf-8")
    return target


# ---- one ring ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Payment:
    """One hop of the ring: `index` in ring order, `number` in time order (1 = earliest)."""

    index: int
    number: int
    src: str
    dst: str
    tx_id: str
    tx: Transaction | None

    @property
    def amount(self) -> str:
        return money(self.tx.amount, self.tx.currency) if self.tx is not None else "amount unknown"

    @property
    def when(self) -> str:
        return moment(self.tx.ts) + " UTC" if self.tx is not None else "time unknown"

    def details(self, hops: int) -> str:
        return (f"payment {self.number} of {hops}: {self.src} \u2192 {self.dst}, {self.amount}, "
                f"{self.when}, transaction {self.tx_id}")


def _payments(alert: Alert, transactions: Mapping[str, Transaction]) -> list[_Payment]:
    n = len(alert.accounts)
    hops = [(i, alert.accounts[i], alert.accounts[(i + 1) % n], tx_id, transactions.get(tx_id))
            for i, tx_id in enumerate(alert.tx_ids)]
    # Time order: (ts, tx_id), the engine's event-time order; a payment without a record keeps its ring place.
    by_time = sorted(hops, key=lambda h: (h[4].ts if h[4] is not None else alert.last_ts, h[4] is None, h[3]))
    numbers = {h[0]: rank for rank, h in enumerate(by_time, 1)}
    return [_Payment(i, numbers[i], src, dst, tx_id, tx) for i, src, dst, tx_id, tx in hops]


def _figure(rank: int, alert: Alert, transactions: Mapping[str, Transaction]) -> str:
    payments = _payments(alert, transactions)
    drawing = _Drawing(alert.accounts, payments)
    cut = f"; search cut short by {', '.join(alert.cut_by) or 'a limit'}" if alert.truncated else ""
    caption = (
        f"<figcaption><b>Ring {rank}</b>: {alert.hops} payments, {html.escape(alert_total(alert))} in total{cut}<br>"
        f"from {moment(alert.first_ts)} to {moment(alert.last_ts)} UTC, raised {moment(alert.detected_at)} UTC<br>"
        f"alert id <code>{html.escape(alert.alert_id)}</code>, closed by <code>{html.escape(alert.trigger_tx_id)}"
        "</code></figcaption>"
    )
    rows = "".join(
        f"<tr data-hop='{p.number}'><td>{p.number}</td><td>{html.escape(p.when)}</td>"
        f"<td>{html.escape(p.src)} \u2192 {html.escape(p.dst)}</td><td class='amount'>{html.escape(p.amount)}</td>"
        f"<td><code>{html.escape(p.tx_id)}</code></td></tr>"
        for p in sorted(payments, key=lambda p: p.number))
    table = f"<table><tr><th>#</th><th>time (UTC)</th><th>payment</th><th>amount</th><th>transaction</th></tr>{rows}</table>"
    return f"<figure data-alert-id='{html.escape(alert.alert_id)}'>{drawing.svg(alert.alert_id)}{caption}{table}</figure>"


# ---- geometry ----------------------------------------------------------------------------------------


Point = tuple[float, float]


@dataclass(frozen=True)
class _Box:
    """An axis-aligned rectangle: centre and half sizes."""

    x: float
    y: float
    half_w: float
    half_h: float

    def overlaps(self, other: "_Box", gap: float = 0.0) -> bool:
        return (abs(self.x - other.x) < self.half_w + other.half_w + gap
                and abs(self.y - other.y) < self.half_h + other.half_h + gap)

    def meets_circle(self, centre: Point, radius: float, gap: float = 0.0) -> bool:
        nearest_x = min(max(centre[0], self.x - self.half_w), self.x + self.half_w)
        nearest_y = min(max(centre[1], self.y - self.half_h), self.y + self.half_h)
        return math.hypot(centre[0] - nearest_x, centre[1] - nearest_y) < radius + gap

    def extent(self, ux: float, uy: float) -> float:
        """Distance from the centre to the edge along the unit direction (ux, uy)."""
        return min(self.half_w / abs(ux) if ux else math.inf, self.half_h / abs(uy) if uy else math.inf)


def _text_width(text: str, size: float) -> float:
    """An over-estimate of `text`'s width in a sans-serif font (wider than Arial, Liberation or DejaVu Sans)."""
    widths = {"upper": 0.78, "digit": 0.66, "lower": 0.64, "narrow": 0.36}
    total = 0.0
    for char in text:
        kind = ("upper" if char.isupper() else "digit" if char.isdigit() else
                "lower" if char.isalpha() else "narrow" if char in " .,:;'-|()" else "upper")
        total += widths[kind]
    return total * size


class _Drawing:
    """Accounts on a circle, one curved arrow per payment, labels placed clear of circles and each other."""

    def __init__(self, accounts: Sequence[str], payments: Sequence[_Payment]):
        self.accounts = list(accounts)
        self.payments = list(payments)
        n = len(accounts)
        self.radius = max(120.0, n * 26.0)
        # Two accounts side by side (their arrows curve above and below); more round a circle from the top.
        start = math.pi if n == 2 else -math.pi / 2
        self.angles = [start + 2 * math.pi * i / n for i in range(n)]
        self.points = [(self.radius * math.cos(a), self.radius * math.sin(a)) for a in self.angles]
        self.curves = [self._curve(i) for i in range(n)]
        self.labels = self._place_labels()

    def _curve(self, i: int) -> tuple[Point, Point, Point, Point, tuple[float, float]]:
        """Start, control, end and midpoint of payment i's quadratic arrow, and its outward direction."""
        n = len(self.accounts)
        mid_angle = self.angles[i] + math.pi / n
        ux, uy = math.cos(mid_angle), math.sin(mid_angle)
        chord_mid = self.radius * math.cos(math.pi / n)  # distance of the straight chord's middle from the centre
        bulge = 0.55 * self.radius if n == 2 else self.radius * 1.12
        control = ((2 * bulge - chord_mid) * ux, (2 * bulge - chord_mid) * uy)  # puts the curve's middle at `bulge`
        p0, p2 = self.points[i], self.points[(i + 1) % n]
        start = _towards(p0, control, _NODE_RADIUS + 1)
        end = _towards(p2, control, _NODE_RADIUS + 4)
        middle = (bulge * ux, bulge * uy)
        return start, control, end, middle, (ux, uy)

    def _label_lines(self, payment: _Payment) -> list[str]:
        return [payment.amount, payment.when.removesuffix(" UTC")[:16] + " UTC" if payment.tx else payment.when]

    def _place_labels(self) -> list[_Box]:
        """Each label just outside its arrow's middle, pushed further out until it touches nothing."""
        placed: list[_Box] = []
        badges = [_Box(c[3][0], c[3][1], _BADGE_RADIUS, _BADGE_RADIUS) for c in self.curves]
        for payment in self.payments:
            lines = self._label_lines(payment)
            half_w = max(_text_width(line, _LABEL_FONT) for line in lines) / 2 + _PAD
            half_h = len(lines) * _LINE_HEIGHT / 2 + _PAD
            _, _, _, (mx, my), (ux, uy) = self.curves[payment.index]
            probe = _Box(0, 0, half_w, half_h)
            distance = _BADGE_RADIUS + _CLEAR + probe.extent(ux, uy)
            while True:
                box = _Box(mx + distance * ux, my + distance * uy, half_w, half_h)
                if not (any(box.meets_circle(p, _NODE_RADIUS, _CLEAR) for p in self.points)
                        or any(box.overlaps(other, _CLEAR) for other in placed + badges)):
                    break
                distance += 4
            placed.append(box)
        return placed

    def svg(self, alert_id: str) -> str:
        marker = f"head-{alert_id[:12]}"
        parts = []
        for payment, (start, control, end, middle, _), box in zip(self.payments, self.curves, self.labels):
            lines = self._label_lines(payment)
            top = box.y - box.half_h + _PAD + _LABEL_FONT
            text = "".join(
                f"<tspan x='{box.x:.1f}' y='{top + k * _LINE_HEIGHT:.1f}'{weight}>{html.escape(line)}</tspan>"
                for k, (line, weight) in enumerate(zip(lines, [" font-weight='bold'", ""])))
            parts.append(
                f"<g class='payment' data-hop='{payment.number}'><title>{html.escape(payment.details(len(self.payments)))}"
                f"</title><path d='M{start[0]:.1f},{start[1]:.1f} Q{control[0]:.1f},{control[1]:.1f} "
                f"{end[0]:.1f},{end[1]:.1f}' marker-end='url(#{marker})'/>"
                f"<g class='hop-badge'><circle cx='{middle[0]:.1f}' cy='{middle[1]:.1f}' r='{_BADGE_RADIUS}'/>"
                f"<text x='{middle[0]:.1f}' y='{middle[1] + 3.5:.1f}' text-anchor='middle'>{payment.number}</text></g>"
                f"<g class='pay-label'><rect x='{box.x - box.half_w:.1f}' y='{box.y - box.half_h:.1f}' "
                f"width='{2 * box.half_w:.1f}' height='{2 * box.half_h:.1f}' rx='4'/>"
                f"<text font-size='{_LABEL_FONT}' text-anchor='middle'>{text}</text></g></g>")
        for point, account in zip(self.points, self.accounts):
            parts.append(
                f"<g class='account-node'><title>account {html.escape(account)}</title>"
                f"<circle class='account' cx='{point[0]:.1f}' cy='{point[1]:.1f}' r='{_NODE_RADIUS}'/>"
                f"<text x='{point[0]:.1f}' y='{point[1] + 4:.1f}' font-size='10' text-anchor='middle'>"
                f"{html.escape(_fit(account, 2 * _NODE_RADIUS - 8, 10))}</text></g>")
        low_x, low_y, high_x, high_y = self._bounds()
        width, height = high_x - low_x, high_y - low_y
        return (
            f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}' "
            f"viewBox='{low_x:.1f} {low_y:.1f} {width:.1f} {height:.1f}' role='img'>"
            f"<defs><marker id='{marker}' markerWidth='10' markerHeight='8' refX='9' refY='4' orient='auto' "
            f"markerUnits='userSpaceOnUse'><path d='M0,0 L10,4 L0,8 z' fill='#b22'/></marker></defs>"
            f"{''.join(parts)}</svg>")

    def _bounds(self) -> tuple[float, float, float, float]:
        boxes = self.labels + [_Box(x, y, _NODE_RADIUS, _NODE_RADIUS) for x, y in self.points]
        boxes += [_Box(c[3][0], c[3][1], _BADGE_RADIUS, _BADGE_RADIUS) for c in self.curves]
        return (min(b.x - b.half_w for b in boxes) - _MARGIN, min(b.y - b.half_h for b in boxes) - _MARGIN,
                max(b.x + b.half_w for b in boxes) + _MARGIN, max(b.y + b.half_h for b in boxes) + _MARGIN)


def _towards(point: Point, target: Point, distance: float) -> Point:
    dx, dy = target[0] - point[0], target[1] - point[1]
    length = math.hypot(dx, dy) or 1.0
    return point[0] + dx / length * distance, point[1] + dy / length * distance


def _fit(text: str, width: float, size: float) -> str:
    """`text`, cut with an ellipsis to fit `width` (the full id is in the node's tooltip)."""
    if _text_width(text, size) <= width:
        return text
    while text and _text_width(text + "\u2026", size) > width:
        text = text[:-1]
    return text + "\u2026"
