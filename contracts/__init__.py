"""Wire contract v1: message schemas only, no I/O.

- `envelope`: the CloudEvents 1.0 envelope; `money` and `fields`: amounts, currencies, ids,
  timestamps, phone numbers;
- `commands` (imperative) and `events` (past tense): the `data` of every message;
- `topics`: the one registry of topics, models, key and idempotency fields;
- `parsing`: bytes -> ValidCommand | InvalidCommand | Unattributable, never an exception;
- `codec`: commands and result events as Kafka-ready bytes;
- `schema_export`: the published JSON Schemas and AsyncAPI document (see docs/contracts.md).
"""
