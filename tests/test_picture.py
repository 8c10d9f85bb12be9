"""rings.html as a reader sees it: rendered by headless Chromium, its geometry read back from the DOM.

Chromium (Debian's `chromium`, installed by tests/run.sh) loads a copy of the
page with a measuring script appended; `--dump-dom` returns the DOM after the
script ran, with every label's, badge's and account circle's box
(`getBoundingClientRect`) and each arrow's midpoint (`getPointAtLength`) as
JSON. No browser automation library is needed for that.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from ringwatch.graph import Alert, Transaction, alert_id
from ringwatch.stream.demo import render_rings_html
from ringwatch.stream.display import money

CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                "(tests/run.sh installs Debian's chromium package)")

MEASURE = """<script>
(function () {
  function rect(el) { var r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }
  function disc(el) { var r = el.getBoundingClientRect(); return [(r.left + r.right) / 2, (r.top + r.bottom) / 2, r.width / 2]; }
  var figures = Array.prototype.map.call(document.querySelectorAll('figure'), function (figure) {
    function all(selector, f) { return Array.prototype.map.call(figure.querySelectorAll(selector), f); }
    return {
      alert: figure.getAttribute('data-alert-id'),
      labels: all('g.pay-label', function (g) {
        return {hop: g.closest('[data-hop]').getAttribute('data-hop'), box: rect(g), text: g.textContent};
      }),
      badges: all('.hop-badge circle', disc),
      accounts: all('circle.account', disc),
      names: all('g.account-node text', rect),
      arrows: all('g.payment > path', function (path) {
        var middle = path.getPointAtLength(path.getTotalLength() / 2).matrixTransform(path.getScreenCTM());
        return [middle.x, middle.y];
      }),
      rows: all('tr[data-hop]', function (tr) { return tr.textContent; })
    };
  });
  var out = document.createElement('pre');
  out.id = 'geometry';
  out.textContent = JSON.stringify(figures);
  document.body.appendChild(out);
})();
</script>"""

DAY = 86_400_000
START = int(datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc).timestamp() * 1000)


def ring(accounts: list[str], amounts: list[str], currencies: list[str | None], tag: str
         ) -> tuple[Alert, list[Transaction]]:
    """A ring closed by its last payment, each payment a day after the one before."""
    n = len(accounts)
    payments = [Transaction(f"{tag}-tx{i}", accounts[i], accounts[(i + 1) % n], Decimal(amounts[i]),
                            START + i * DAY + 37_000, currencies[i]) for i in range(n)]
    totals: dict[str, Decimal] = {}
    for tx in payments:
        totals[tx.currency or ""] = totals.get(tx.currency or "", Decimal(0)) + tx.amount
    mixed = len(totals) > 1
    alert = Alert(alert_id=alert_id(payments[-1].tx_id, tuple(accounts)), trigger_tx_id=payments[-1].tx_id,
                  accounts=tuple(accounts), tx_ids=tuple(tx.tx_id for tx in payments), hops=n,
                  total_amount=sum(totals.values()), first_ts=payments[0].ts, last_ts=payments[-1].ts,
                  detected_at=payments[-1].ts + 120, latency_ms=3.0,
                  currency="mixed" if mixed else payments[0].currency, totals=totals if mixed else {})
    return alert, payments


def measure(tmp_path, alerts: list[Alert], payments: list[Transaction]) -> list[dict]:
    page = render_rings_html(alerts, {tx.tx_id: tx for tx in payments}, tmp_path / "rings.html", limit=len(alerts))
    measured = tmp_path / "measured.html"
    measured.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,1200",
                             "--dump-dom", measured.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="geometry">(.*?)</pre>', result.stdout, re.S)
    assert found, f"Chromium did not run the page's script: {result.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def apart(a: list[float], b: list[float]) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def clear_of_disc(box: list[float], disc: list[float]) -> bool:
    x, y, radius = disc
    nearest = (min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3]))
    return math.hypot(x - nearest[0], y - nearest[1]) >= radius


RINGS = [
    ring(["ACCOUNT-000000001234", "ACCOUNT-000000005678"], ["1234567.8901", "1234000.5"], ["EUR", "EUR"], "two"),
    ring(["A1", "A2", "A3"], ["900", "880.25", "861"], ["USD", "USD", "USD"], "three"),
    ring([f"B{i:04d}" for i in range(6)], [str(5000 - 90 * i) for i in range(6)], ["GBP"] * 6, "six"),
    ring([f"C{i}" for i in range(10)], [str(99_999 - i) for i in range(10)], [None] * 10, "ten"),
    ring(["M1", "M2", "M3"], ["700", "650", "640"], ["EUR", "USD", "USD"], "mixed"),
]


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> dict[str, dict]:
    alerts = [alert for alert, _ in RINGS]
    measured = measure(tmp_path_factory.mktemp("picture"), alerts, [tx for _, txs in RINGS for tx in txs])
    return {figure["alert"]: figure for figure in measured}


@pytest.mark.parametrize("index", range(len(RINGS)), ids=[txs[0].tx_id.split("-")[0] for _, txs in RINGS])
def test_labels_overlap_neither_each_other_nor_account_circles(figures, index):
    alert, _ = RINGS[index]
    figure = figures[alert.alert_id]
    labels = figure["labels"]
    assert len(labels) == len(figure["accounts"]) == alert.hops
    for i, label in enumerate(labels):
        for other in labels[i + 1:]:
            assert apart(label["box"], other["box"]), (label["text"], other["text"])
        for disc in figure["accounts"]:
            assert clear_of_disc(label["box"], disc), label["text"]
    for badge in figure["badges"]:
        for disc in figure["accounts"]:
            assert math.hypot(badge[0] - disc[0], badge[1] - disc[1]) >= badge[2] + disc[2]
    for name, disc in zip(figure["names"], figure["accounts"]):  # each account's name stays inside its circle
        assert disc[0] - disc[2] <= name[0] and name[2] <= disc[0] + disc[2]


def test_a_two_hop_ring_curves_its_payments_apart(figures):
    alert, _ = RINGS[0]
    figure = figures[alert.alert_id]
    (first, second), radius = figure["arrows"], figure["accounts"][0][2]
    assert math.dist(first, second) > 4 * radius  # two arrows, one above and one below, not one line
    top, bottom = sorted(figure["labels"], key=lambda label: label["box"][1])
    assert top["box"][3] <= bottom["box"][1]


def test_payments_are_numbered_in_time_order_with_full_dates_and_currency(figures):
    for alert, payments in RINGS:
        figure = figures[alert.alert_id]
        assert [row.split("2024-")[0] for row in figure["rows"]] == [str(i) for i in range(1, alert.hops + 1)]
        shown = [re.search(r"2024-\d\d-\d\d \d\d:\d\d:\d\d", row).group(0) for row in figure["rows"]]
        assert shown == sorted(shown)
        for label in figure["labels"]:
            tx = payments[int(label["hop"]) - 1]  # the payments were made in ring order, a day apart
            when = datetime.fromtimestamp(tx.ts / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
            assert label["text"] == money(tx.amount, tx.currency) + when + " UTC"


def test_the_page_names_the_alert_and_details_each_payment_on_hover(tmp_path):
    alert, payments = RINGS[0]
    page = render_rings_html([alert], {tx.tx_id: tx for tx in payments}, tmp_path / "rings.html").read_text()
    assert alert.alert_id in page and alert.trigger_tx_id in page
    assert "1,234,567.8901 EUR" in page and "2,468,568.3901 EUR" in page  # exact, with the currency
    assert ("<title>payment 1 of 2: ACCOUNT-000000001234 \u2192 ACCOUNT-000000005678, 1,234,567.8901 EUR, "
            "2024-03-01 09:30:37 UTC, transaction two-tx0</title>") in page
    assert "<title>account ACCOUNT-000000005678</title>" in page
    mixed_alert, mixed_payments = RINGS[4]
    mixed = render_rings_html([mixed_alert], {tx.tx_id: tx for tx in mixed_payments}, tmp_path / "m.html").read_text()
    assert "700.00 EUR + 1,290.00 USD in total" in mixed
