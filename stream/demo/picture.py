"""A picture of rings for people: one self-contained HTML page of SVG drawings.

Each ring is drawn as a circle of accounts with an arrow per payment, labelled
with its amount and time, so an analyst can see the money go round. HTML with
inline SVG needs no plotting library and opens in any browser.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from ringwatch.graph import Alert, Transaction

_SIZE = 360
_RADIUS = 120
_NODE_RADIUS = 26


def render_rings_html(
    alerts: Sequence[Alert],
    transactions: Mapping[str, Transaction],
    path: str | Path,
    *,
    title: str = "ringwatch: rings found",
    limit: int = 6,
) -> Path:
    """Write the `limit` largest rings (by total amount) to `path` and return it.

    `transactions` maps tx_id to the transaction, for the amount and time of each hop.
    """
    top = sorted(alerts, key=lambda a: a.total_amount, reverse=True)[:limit]
    figures = "\n".join(_ring_figure(alert, transactions) for alert in top)
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:24px}figure{display:inline-block;margin:8px;"
        "border:1px solid #ccc;border-radius:8px;padding:8px}figcaption{font-size:13px;max-width:360px}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(alerts)} rings found; the {len(top)} largest by amount:</p>"
        f"{figures}</body></html>\n"
    )
    target = Path(path)
    target.write_text(page, encoding="utf-8")
    return target


def _ring_figure(alert: Alert, transactions: Mapping[str, Transaction]) -> str:
    n = len(alert.accounts)
    points = [_on_circle(i, n) for i in range(n)]
    arrows = []
    for i, tx_id in enumerate(alert.tx_ids):
        start, end = points[i], points[(i + 1) % n]
        arrows.append(_arrow(start, end, _hop_label(transactions.get(tx_id))))
    nodes = [_node(point, account) for point, account in zip(points, alert.accounts)]
    caption = (
        f"{alert.hops} hops, {alert.total_amount:,.2f} in total; closed by {html.escape(alert.trigger_tx_id)}"
        f"{' (search truncated)' if alert.truncated else ''}"
    )
    return (
        f"<figure><svg xmlns='http://www.w3.org/2000/svg' width='{_SIZE}' height='{_SIZE}' "
        f"viewBox='0 0 {_SIZE} {_SIZE}'><defs><marker id='head' markerWidth='10' markerHeight='8' "
        "refX='9' refY='4' orient='auto'><path d='M0,0 L10,4 L0,8 z' fill='#b22'/></marker></defs>"
        f"{''.join(arrows)}{''.join(nodes)}</svg><figcaption>{caption}</figcaption></figure>"
    )


def _on_circle(index: int, count: int) -> tuple[float, float]:
    angle = -math.pi / 2 + 2 * math.pi * index / count
    centre = _SIZE / 2
    return centre + _RADIUS * math.cos(angle), centre + _RADIUS * math.sin(angle)


def _arrow(start: tuple[float, float], end: tuple[float, float], label: str) -> str:
    """A straight arrow from the rim of one account's circle to the rim of the next."""
    dx, dy = end[0] - start[0], end[1] - start[1]
    length = math.hypot(dx, dy) or 1.0
    ux, uy = dx / length, dy / length
    x1, y1 = start[0] + ux * _NODE_RADIUS, start[1] + uy * _NODE_RADIUS
    x2, y2 = end[0] - ux * (_NODE_RADIUS + 2), end[1] - uy * (_NODE_RADIUS + 2)
    # Labels sit just outside the ring, beside the middle of the arrow.
    mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
    ox, oy = mx - _SIZE / 2, my - _SIZE / 2
    norm = math.hypot(ox, oy) or 1.0
    lx, ly = mx + 18 * ox / norm, my + 18 * oy / norm
    return (
        f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' stroke='#b22' "
        "stroke-width='2' marker-end='url(#head)'/>"
        f"<text x='{lx:.1f}' y='{ly:.1f}' font-size='10' text-anchor='middle'>{html.escape(label)}</text>"
    )


def _node(point: tuple[float, float], account: str) -> str:
    x, y = point
    short = account if len(account) <= 9 else account[:8] + "…"
    return (
        f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{_NODE_RADIUS}' fill='#eef' stroke='#335'/>"
        f"<text x='{x:.1f}' y='{y + 4:.1f}' font-size='10' text-anchor='middle'>"
        f"<title>{html.escape(account)}</title>{html.escape(short)}</text>"
    )


def _hop_label(tx: Transaction | None) -> str:
    if tx is None:
        return "?"
    moment = datetime.fromtimestamp(tx.ts / 1000, tz=timezone.utc).strftime("%m-%d %H:%M")
    return f"{tx.amount:,.2f} @ {moment}"
