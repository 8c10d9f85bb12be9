"""JsonlSink and the settled-id record: idempotent by alert id across restarts, bounded, crash-tolerant."""

from __future__ import annotations

import json

from ringwatch.connectors import JsonlSink
from ringwatch.connectors.settled import SettledIds
from ringwatch.graph import Alert, alert_id


def make_alert(i: int) -> Alert:
    accounts = (f"a{i}", f"b{i}")
    return Alert(alert_id(f"t{i}", accounts), f"t{i}", accounts, (f"s{i}", f"t{i}"), 2, 190.0, 1, 2, 3, 0.5)


def read_ids(path) -> list[str]:
    return [json.loads(line)["alert_id"] for line in path.read_text().splitlines()]


def test_jsonl_sink_appends_each_alert_once_across_reopen(tmp_path):
    path = tmp_path / "alerts" / "alerts.jsonl"
    alerts = [make_alert(i) for i in range(5)]
    sink = JsonlSink(path)
    sink.deliver(alerts[:3])
    sink.deliver(alerts[1:4])
    assert sink.flush()
    sink.close()

    reopened = JsonlSink(path)
    reopened.deliver(alerts)
    reopened.close()

    assert read_ids(path) == [a.alert_id for a in alerts]
    assert Alert.from_dict(json.loads(path.read_text().splitlines()[2])) == alerts[2]


def test_jsonl_sink_rewrites_an_alert_whose_line_a_crash_cut_short(tmp_path):
    path = tmp_path / "alerts.jsonl"
    alerts = [make_alert(i) for i in range(3)]
    sink = JsonlSink(path)
    sink.deliver(alerts[:2])
    sink.close()
    with open(path, "a") as file:
        file.write(alerts[2].to_json()[:25])

    reopened = JsonlSink(path)
    reopened.deliver(alerts)
    reopened.close()

    assert read_ids(path) == [a.alert_id for a in alerts]


def test_settled_ids_survive_reopen_and_forget_only_the_oldest_beyond_capacity(tmp_path):
    path = tmp_path / "settled"
    settled = SettledIds(path, capacity=10)
    for i in range(35):
        settled.add([f"id{i}"])
    settled.close()

    reopened = SettledIds(path, capacity=10)
    assert all(f"id{i}" in reopened for i in range(25, 35))
    assert "id24" not in reopened
    assert len(path.read_text().splitlines()) <= 20, "the file is compacted, not grown without bound"
    reopened.close()


def test_settled_ids_ignore_a_half_written_last_line(tmp_path):
    path = tmp_path / "settled"
    settled = SettledIds(path)
    settled.add(["first", "second"])
    settled.close()
    with open(path, "a") as file:
        file.write("thi")

    reopened = SettledIds(path)
    reopened.add(["third"])
    reopened.close()

    assert path.read_text().splitlines() == ["first", "second", "third"]
