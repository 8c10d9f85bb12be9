"""`ringwatch webhook resend FILE --url URL`: post a dead-letter file again, once the receiver is fixed.

The engine's webhook sink dead-letters only what the endpoint refused (a 4xx
answer, a redirect); an endpoint that is down holds the queue instead, and the
sink delivers everything once it answers again. So this command is for after
a receiver's fix: it posts each alert of the file in order, signed with the
same secret and with the alert id as `webhook-id` (receivers that already have
an alert deduplicate it), under the same retry rules as the sink. What is still
not delivered is written to a file of the same format, to run again.

The secret comes from RINGWATCH_WEBHOOK_SECRET or `--secret-file`, never from
the command line, where `ps` would show it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ringwatch.connectors import InvalidWebhookConfigError, WebhookClient, read_alert_lines, resend
from ringwatch.connectors.webhook_client import Backoff
from ringwatch.graph import InvalidDurationError, parse_duration
from ringwatch.runtime.files import write_atomically

SECRET_ENV = "RINGWATCH_WEBHOOK_SECRET"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("webhook", help="re-send a webhook dead-letter file",
                                   description="Tools for the webhook sink's files.")
    actions = parser.add_subparsers(dest="webhook_command", metavar="ACTION", required=True)
    again = actions.add_parser(
        "resend", help="post the alerts of a dead-letter (or alerts JSON-lines) file, in order",
        description="Post every alert of FILE (the webhook sink's dead-letter.jsonl, or an alerts JSON-lines "
                    "file) to URL in order, signed per Standard Webhooks with the alert id as webhook-id. "
                    f"The secret comes from {SECRET_ENV} or --secret-file. Exit 0 when every alert was "
                    "delivered, 1 when some were not (they are written to --remaining), 2 on bad input.")
    again.add_argument("file", type=Path, help="dead-letter.jsonl or alerts.jsonl")
    again.add_argument("--url", required=True, help="the webhook endpoint, http(s)://host[:port]/path")
    again.add_argument("--secret-file", type=Path, help=f"file holding the whsec_ secret (default: {SECRET_ENV})")
    again.add_argument("--timeout", default="10s", help="timeout of one attempt (default 10s)")
    again.add_argument("--max-attempts", type=int, default=8,
                       help="attempts per alert when the endpoint fails; then sending stops (default 8)")
    again.add_argument("--backoff-initial", default="500ms", help="first retry delay, doubling (default 500ms)")
    again.add_argument("--backoff-max", default="60s", help="longest retry delay (default 60s)")
    again.add_argument("--remaining", type=Path,
                       help="where undelivered alerts go (default: FILE's name with .remaining.jsonl)")
    again.set_defaults(handler=_resend)


def _resend(args: argparse.Namespace) -> int:
    try:
        secret = _secret(args.secret_file)
        if args.max_attempts < 1:
            raise InvalidWebhookConfigError(f"--max-attempts: must be at least 1, got {args.max_attempts}")
        backoff = Backoff(_seconds("--backoff-initial", args.backoff_initial),
                          _seconds("--backoff-max", args.backoff_max))
        alerts = list(read_alert_lines(args.file))
        client = WebhookClient(args.url, secret, timeout_s=_seconds("--timeout", args.timeout))
    except (InvalidWebhookConfigError, ValueError, OSError) as exc:
        print(f"ringwatch webhook resend: {exc}", file=sys.stderr)
        return 2
    with client:
        report = resend(alerts, client, max_attempts=args.max_attempts, backoff=backoff)
    print(f"{len(report.delivered)} of {len(alerts)} alerts delivered")
    if not report.remaining:
        return 0
    remaining = args.remaining or args.file.with_name(args.file.name.removesuffix(".jsonl") + ".remaining.jsonl")
    write_atomically(remaining, "".join(json.dumps(entry) + "\n" for entry in report.remaining).encode())
    if report.refused:
        print(f"{len(report.refused)} refused by the endpoint")
    if report.unsent:
        print(f"{len(report.unsent)} not sent: the endpoint kept failing ({report.stopped_by})")
    print(f"undelivered alerts written to {remaining}; run this command on it again")
    return 1


def _secret(secret_file: Path | None) -> str:
    if secret_file is not None:
        return secret_file.read_text(encoding="utf-8").strip()
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        raise InvalidWebhookConfigError(f"no webhook secret: set {SECRET_ENV} or pass --secret-file")
    return secret


def _seconds(flag: str, value: str) -> float:
    try:
        ms = parse_duration(value, name=flag)
    except InvalidDurationError as exc:
        raise InvalidWebhookConfigError(str(exc)) from None
    if not ms or ms <= 0:
        raise InvalidWebhookConfigError(f"{flag}: must be more than 0, got {value!r}")
    return ms / 1000
