"""Input mapping: the user's message layout onto the transaction contract, with an optional JSON Schema check.

A topic whose payments look like `{"id": "p1", "payer": {"iban": "DE1"},
"payee": {"iban": "FR7"}, "value": "120.50", "booked_at": "2024-05-01T12:00:00Z"}`
is read with

    [source.fields]
    tx_id = "id"
    src = "payer.iban"
    dst = "payee.iban"
    amount = "value"
    ts = "booked_at"

Rules, in full:

- Each key names an output field and each value where it comes from. The
  contract fields (`tx_id`, `src`, `dst`, `amount`, `ts`, `currency`) feed the
  transaction; any other key renames an extra field (kept on the transaction
  and its alerts). A contract field not mapped is read under its own name.
- A path is a field name, or dotted names into nested objects
  (`payer.iban`); a name that itself contains dots is found as it is first.
- A list of paths joins their values with `-` (an account made of a bank
  code and an account number: `src = ["bank", "account"]`); a missing part
  leaves the field missing.
- `@source`, `@partition` and `@offset` are the record's position (topic or
  file stem, partition, offset or row number), for input without ids:
  `tx_id = ["@source", "@partition", "@offset"]` is unique and the same on
  every replay.
- Input fields that were mapped are not kept again as extras; the others are.

With a schema (`source.schema_file`, JSON Schema draft 2020-12 by default, or
whatever `$schema` says), each decoded message is checked before mapping; a
message that fails goes to the dead letters as `invalid:schema` with the
first error's path and message. The mapping and the schema are one small
object (`FieldMapping`) that every reader calls per record: Kafka messages,
JSON lines, CSV and Parquet rows alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from ringwatch.graph.model import DEFAULT_MAX_AMOUNT
from ringwatch.runtime.errors import RingwatchError

CONTRACT_FIELDS = ("tx_id", "src", "dst", "amount", "ts", "currency")
POSITION_NAMES = ("@source", "@partition", "@offset")
JOINER = "-"

Path_ = str | Sequence[str]


class InvalidMappingError(RingwatchError, ValueError):
    """A `[source.fields]` entry or schema file that cannot be used; the message names it."""


class RecordRejected(RingwatchError, ValueError):
    """A record the schema refuses; `reason` is the dead-letter reason (`invalid:schema: ...`)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _lookup(data: Mapping[str, Any], path: str) -> Any:
    if path in data:
        return data[path]
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


@dataclass(frozen=True)
class FieldMapping:
    """`fields` maps output names to input paths (see the module doc); `schema` is a JSON Schema or None;
    `max_amount` the ceiling on one payment (`source.max_amount`), applied when the record is validated."""

    fields: Mapping[str, Path_] = field(default_factory=dict)
    schema: Mapping[str, Any] | None = None
    max_amount: Decimal = DEFAULT_MAX_AMOUNT

    def __post_init__(self) -> None:
        for name, path in self.fields.items():
            parts = [path] if isinstance(path, str) else path
            if not name or not isinstance(parts, Sequence) or not parts or \
                    not all(isinstance(p, str) and p for p in parts):
                raise InvalidMappingError(f"source.fields.{name}: expected a field path or a list of field "
                                          f"paths, got {path!r}")
        validator = None
        if self.schema is not None:
            import jsonschema

            try:
                cls = jsonschema.validators.validator_for(self.schema)
                cls.check_schema(self.schema)
            except jsonschema.SchemaError as exc:
                raise InvalidMappingError(f"source.schema_file: not a valid JSON Schema: {exc.message}") from None
            validator = cls(self.schema)
        object.__setattr__(self, "_validator", validator)
        paths = [p for path in self.fields.values() for p in ([path] if isinstance(path, str) else path)
                 if p not in POSITION_NAMES]
        object.__setattr__(self, "_paths", paths)

    @property
    def is_identity(self) -> bool:
        """No field renamed and no schema: records pass as they are (the amount ceiling still applies)."""
        return not self.fields and self.schema is None

    def apply(self, data: Mapping[str, Any], position: tuple = ()) -> dict[str, Any]:
        """The record in contract form; raises `RecordRejected` when the schema refuses it."""
        if self._validator is not None:  # type: ignore[attr-defined]
            error = next(iter(self._validator.iter_errors(data)), None)  # type: ignore[attr-defined]
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(message)"
                raise RecordRejected(f"invalid:schema: {where}: {error.message}")
        if not self.fields:
            return dict(data)
        consumed = {p if p in data else p.split(".", 1)[0] for p in self._paths}  # type: ignore[attr-defined]
        out = {key: value for key, value in data.items() if key not in consumed}
        for name, path in self.fields.items():
            value = self._value(data, path, position)
            if value is None:
                out.pop(name, None)
            else:
                out[name] = value
        return out

    def _value(self, data: Mapping[str, Any], path: Path_, position: tuple) -> Any:
        if isinstance(path, str):
            return self._one(data, path, position)
        parts = [self._one(data, p, position) for p in path]
        if any(part is None or part == "" for part in parts):
            return None
        return JOINER.join(str(part) for part in parts)

    @staticmethod
    def _one(data: Mapping[str, Any], path: str, position: tuple) -> Any:
        if path in POSITION_NAMES:
            index = POSITION_NAMES.index(path)
            return position[index] if index < len(position) else None
        return _lookup(data, path)


IDENTITY = FieldMapping()


def load_schema(path: str | Path) -> dict[str, Any]:
    """A JSON Schema from a file; errors name `source.schema_file`."""
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidMappingError(f"source.schema_file: cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise InvalidMappingError(f"source.schema_file: {path} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise InvalidMappingError(f"source.schema_file: {path} must hold a JSON object (a JSON Schema)")
    return schema
