"""Settings a user writes and the errors they get: the [kafka] table, secrets, input mapping, masking."""

from __future__ import annotations

import json
import logging

import pytest

from ringwatch.connectors import FileSource
from ringwatch.connectors.mapping import FieldMapping, InvalidMappingError
from ringwatch.connectors.records import record_from_json
from ringwatch.stream import logs
from ringwatch.stream.config import ConfigError, OTHER_ENVIRONMENT, dump_sections, load, settings
from ringwatch.stream.progress import Progress

MINIMAL = {"source.topics": ["payments"], "sinks.alerts_file": "alerts.jsonl"}


def load_toml(tmp_path, text: str, environ: dict | None = None):
    path = tmp_path / "ringwatch.toml"
    path.write_text(text)
    return load(path, environ=environ or {}, overrides=MINIMAL)


# ---- the [kafka] table ------------------------------------------------------------------------------------

def test_kafka_table_reaches_each_client_kind_it_belongs_to(tmp_path):
    config = load_toml(tmp_path, '[kafka]\nclient_id = "rw-eu1"\nauto_offset_reset = "latest"\n'
                                 'fetch_max_bytes = 1048576\nlinger_ms = 20\n'
                                 '[kafka.producer]\ncompression_type = "gzip"\n[kafka.consumer]\nclient_id = "rw-in"\n')
    settings_ = config.kafka_settings()
    consumer = settings_.consumer({"bootstrap_servers": "b:1", "auto_offset_reset": "earliest"})
    producer = settings_.producer({"bootstrap_servers": "b:1", "acks": "all"}, "alerts")
    assert (consumer["client_id"], consumer["auto_offset_reset"], consumer["fetch_max_bytes"]) == \
        ("rw-in", "latest", 1_048_576)
    assert "linger_ms" not in consumer and "compression_type" not in consumer
    assert (producer["client_id"], producer["linger_ms"], producer["compression_type"], producer["acks"]) == \
        ("rw-eu1-alerts", 20, "gzip", "all")
    assert "auto_offset_reset" not in producer


@pytest.mark.parametrize("text, named, hint", [
    ('[kafka]\nauto_offset_rest = "latest"\n', "kafka.auto_offset_rest", "did you mean auto_offset_reset"),
    ('[kafka]\nfetch_max_bytes = "lots"\n', "kafka.fetch_max_bytes", "expected int"),
    ('[kafka]\nenable_auto_commit = true\n', "kafka.enable_auto_commit", "commits offsets itself"),
    ('[kafka]\nacks = 1\n', "kafka.acks", "acks=all"),
    ('[kafka]\nsasl_plain_password = "x"\n', "kafka.sasl_plain_password", "RINGWATCH_SASL_PASSWORD"),
    ('[kafka.consumer]\nlinger_ms = 5\n', "kafka.consumer.linger_ms", "not a KafkaConsumer setting"),
    ('[kafka]\nsecurity_protocol = "TLS"\n', "kafka.security_protocol", "SASL_SSL"),
    ('[kafka]\nsecurity_protocol = "SASL_SSL"\n', "kafka.sasl_mechanism", "SCRAM-SHA-512"),
    ('[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-256"\nsasl_username = "u"\n',
     "kafka.sasl_password", "RINGWATCH_SASL_PASSWORD"),
    ('[kafka]\nsecurity_protocol = "SSL"\nssl_cafile = "/no/such/ca.pem"\n', "kafka.ssl_cafile", "not a readable"),
    ('[kafka]\nsasl_mechanism = "PLAIN"\n', "kafka.sasl_mechanism", "SASL_PLAINTEXT or SASL_SSL"),
])
def test_bad_kafka_settings_stop_the_engine_naming_the_key(tmp_path, text, named, hint):
    with pytest.raises(ConfigError) as caught:
        load_toml(tmp_path, text)
    assert str(caught.value).startswith(named) and hint in str(caught.value)


# ---- secrets --------------------------------------------------------------------------------------------

def test_secrets_come_from_the_environment_or_a_file_and_are_masked_in_the_dump(tmp_path):
    (tmp_path / "sasl").write_text("s3cret-from-file\n")
    config = load_toml(tmp_path, f'[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\n'
                                 f'sasl_username = "rw"\nsasl_password_file = "{tmp_path / "sasl"}"\n'
                                 f'[sinks]\nwebhook_url = "https://rw:urlpass@hooks.example/x"\n',
                       environ={"RINGWATCH_WEBHOOK_SECRET": "whsec_QUJDREVGR0hJSktM"})
    assert config.kafka.sasl_password == "s3cret-from-file"
    assert set(config.secrets()) == {"s3cret-from-file", "whsec_QUJDREVGR0hJSktM"}
    dumped = json.dumps(dump_sections(config))
    for secret in ("s3cret-from-file", "QUJDREVGR0hJSktM", "urlpass"):
        assert secret not in dumped
    assert "https://rw:***@hooks.example/x" in dumped


def test_a_secret_given_twice_or_an_unreadable_secret_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"^sinks\.webhook_secret: given both"):
        load_toml(tmp_path, f'[sinks]\nwebhook_url = "http://h/"\nwebhook_secret_file = "{tmp_path}/s"\n',
                  environ={"RINGWATCH_WEBHOOK_SECRET": "whsec_QUJD"})
    with pytest.raises(ConfigError, match=r"^sinks\.webhook_secret_file: cannot read"):
        load_toml(tmp_path, f'[sinks]\nwebhook_url = "http://h/"\nwebhook_secret_file = "{tmp_path}/missing"\n')
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=r"^kafka\.sasl_password_file: .* is empty"):
        load_toml(tmp_path, f'[kafka]\nsasl_password_file = "{tmp_path / "empty"}"\n')


@pytest.mark.parametrize("url, problem", [
    ("http://[::1/x", "Invalid IPv6 URL"),
    ("http://127.0.0.1:99999/x", "Port out of range"),
    ("ftp://host/x", "expected http(s)"),
    ("https://fraud.example.com/ring watch", "contains whitespace"),
])
def test_a_broken_webhook_url_names_the_setting(url, problem):
    with pytest.raises(ConfigError, match=r"^sinks\.webhook_url: ") as caught:
        load(environ={"RINGWATCH_WEBHOOK_SECRET": "whsec_QUJD"}, overrides={**MINIMAL, "sinks.webhook_url": url})
    assert problem in str(caught.value)


def test_every_documented_environment_variable_is_accepted():
    for name in OTHER_ENVIRONMENT:
        load(environ={name: "0"}, overrides=MINIMAL)
    load(environ={"RINGWATCH_CHECKPOINT_URI": "file:///shared/ckpt"}, overrides=MINIMAL)
    with pytest.raises(ConfigError, match="RINGWATCH_CHECKPOINT_URL: unknown environment setting; "
                                          "did you mean RINGWATCH_CHECKPOINT_URI"):
        load(environ={"RINGWATCH_CHECKPOINT_URL": "file:///typo"}, overrides=MINIMAL)
    with pytest.raises(ConfigError, match=r"RINGWATCH_NOTHING_LIKE_IT: unknown environment setting; known: \[.*"
                                          "'RINGWATCH_WINDOW'"):
        load(environ={"RINGWATCH_NOTHING_LIKE_IT": "1"}, overrides=MINIMAL)


def test_a_misspelt_config_key_or_section_is_named_with_its_likely_fix(tmp_path):
    config = tmp_path / "ringwatch.toml"
    config.write_text('[graph]\nwindw = "7d"\n')
    with pytest.raises(ConfigError, match=r"^graph\.windw: unknown key in .*; did you mean window\?$"):
        load(config, overrides=MINIMAL)
    config.write_text('[sinkz]\nalerts_file = "a.jsonl"\n')
    with pytest.raises(ConfigError, match=r"^sinkz: unknown section in .*; did you mean sinks\?$"):
        load(config, overrides=MINIMAL)
    config.write_text('[graph]\nzzz = 1\n')
    with pytest.raises(ConfigError, match=r"^graph\.zzz: unknown key in .*; known: \[.*'max_hops'.*'window'"):
        load(config, overrides=MINIMAL)


def test_every_ringwatch_variable_the_docs_mention_is_one_run_accepts():
    import re
    from pathlib import Path

    from ringwatch.stream.config import FOREIGN_ENV_PREFIXES

    repo = Path(__file__).resolve().parents[1]
    text = "".join(path.read_text() for path in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))])
    mentioned = set(re.findall(r"\bRINGWATCH_[A-Z0-9_]*[A-Z0-9]\b", text))
    known = {s.env for s in settings()} | set(OTHER_ENVIRONMENT)
    assert {"RINGWATCH_CHECKPOINT_URI", "RINGWATCH_TOKEN"} <= mentioned
    assert {name for name in mentioned if name not in known and not name.startswith(FOREIGN_ENV_PREFIXES)} == set()


def test_settings_flags_and_variables_are_unique():
    assert len({s.env for s in settings()}) == len(settings())
    assert not {s.env for s in settings()} & set(OTHER_ENVIRONMENT)


# ---- masking --------------------------------------------------------------------------------------------

def test_the_masker_hides_credentials_in_messages_and_tracebacks():
    masker = logs.SecretMasker()
    masker.add("registered-secret-value")
    record = logging.LogRecord("kafka.conn", logging.ERROR, __file__, 1, "connect %s failed (password=%s)",
                               ("https://alice:pa55word@broker:9093/x", "hunter2"), None)
    try:
        raise RuntimeError("token: registered-secret-value; Authorization: Bearer eyJhbGciOi.abc")
    except RuntimeError:
        import sys
        record.exc_info = sys.exc_info()
    masker.filter(record)
    text = logging.Formatter("%(message)s").format(record)
    for leaked in ("pa55word", "hunter2", "registered-secret-value", "eyJhbGciOi"):
        assert leaked not in text
    assert "https://alice:***@broker:9093/x" in text and "password=***" in text and "Bearer ***" in text
    assert "whsec_***" == masker.mask("whsec_QUJDREVGR0hJSktM")


# ---- input mapping ----------------------------------------------------------------------------------------

def test_a_mapping_reads_nested_fields_joins_parts_and_renames_extras():
    mapping = FieldMapping({"tx_id": ["@source", "@partition", "@offset"], "src": "payer.iban",
                            "dst": ["payee.bank", "payee.account"], "amount": "value", "ts": "booked_at",
                            "channel": "meta.channel"})
    raw = json.dumps({"payer": {"iban": "DE01"}, "payee": {"bank": "0042", "account": "77"}, "value": "12.50",
                      "booked_at": "2024-05-01T12:00:00Z", "meta": {"channel": "app"}, "note": "rent"}).encode()
    record = record_from_json(("payments", 3, 1207), raw, mapping=mapping)
    tx = record.transaction
    assert (tx.tx_id, tx.src, tx.dst, tx.ts) == ("payments-3-1207", "DE01", "0042-77", 1_714_564_800_000)
    assert float(tx.amount) == 12.5
    assert tx.extra == {"channel": "app", "note": "rent"}


def test_a_schema_failure_is_a_dead_letter_reason_and_a_bad_mapping_is_named():
    schema = {"type": "object", "required": ["value"], "properties": {"value": {"type": "string"}}}
    mapping = FieldMapping({"amount": "value"}, schema)
    record = record_from_json(("payments", 0, 5), b'{"tx_id": "t", "src": "a", "dst": "b", "value": 12, "ts": 1}',
                              mapping=mapping)
    assert record.error == "invalid:schema: value: 12 is not of type 'string'"
    assert record.raw.startswith(b'{"tx_id"')
    with pytest.raises(InvalidMappingError, match=r"source\.fields\.src"):
        FieldMapping({"src": ["payer", 3]})
    with pytest.raises(InvalidMappingError, match=r"source\.schema_file: not a valid JSON Schema"):
        FieldMapping({}, {"type": "no-such-type"})


def test_the_amount_ceiling_is_a_setting_and_a_payment_above_it_is_a_dead_letter(tmp_path):
    """`source.max_amount` reaches the records the engine's source makes (KafkaSource gets `field_mapping()`)."""
    config = load_toml(tmp_path, '[source]\nmax_amount = "1000.00"\n')
    mapping = config.field_mapping()
    payment = {"tx_id": "t1", "src": "a", "dst": "b", "amount": "1000.00", "ts": 1_714_564_800_000}
    assert record_from_json(("p", 0, 0), json.dumps(payment).encode(), mapping=mapping).ok
    above = record_from_json(("p", 0, 1), json.dumps({**payment, "amount": "1000.01"}).encode(), mapping=mapping)
    assert above.error == "invalid:amount: '1000.01' is above the ceiling 1000.00"
    default = load_toml(tmp_path, "").field_mapping()  # 10^12 unless set
    assert record_from_json(("p", 0, 2), json.dumps({**payment, "amount": "999999999999"}).encode(),
                            mapping=default).ok
    for bad in ("-5", "lots", "1e400", "1000000000000.01"):
        with pytest.raises(ConfigError, match=r"source\.max_amount"):
            load_toml(tmp_path, f'[source]\nmax_amount = "{bad}"\n').field_mapping()


def test_csv_rows_go_through_the_configured_mapping(tmp_path):
    path = tmp_path / "bank-export.csv"
    path.write_text("Ref,Payer,Payee,EUR,Booked\nr1,a,b,10.00,2024-01-01T00:00:00Z\nr2,b,a,oops,2024-01-01T00:00:01Z\n")
    mapping = FieldMapping({"tx_id": "Ref", "src": "Payer", "dst": "Payee", "amount": "EUR", "ts": "Booked"})
    first, second = FileSource(path, mapping=mapping)
    assert (first.transaction.tx_id, first.transaction.src, first.transaction.extra) == ("r1", "a", {})
    assert second.error.startswith("invalid:amount")


# ---- progress -------------------------------------------------------------------------------------------

class NotATerminal:
    def __init__(self):
        self.written = ""

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> None:
        self.written += text

    def flush(self) -> None:
        pass


def test_progress_logs_lines_when_stderr_is_not_a_terminal(caplog):
    stream = NotATerminal()
    progress = Progress("demo", stream=stream, log_interval_s=0)
    with caplog.at_level(logging.INFO, logger="ringwatch.progress"):
        progress.update(1_500, alerts=3)
        progress.finish(2_000, alerts=4)
    assert stream.written == ""  # no carriage-return line into a pipe
    lines = [r.getMessage() for r in caplog.records if r.name == "ringwatch.progress"]
    assert len(lines) == 2 and lines[0].startswith("demo: 1,500 tx") and lines[1].endswith("alerts 4")
