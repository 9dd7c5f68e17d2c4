"""The control protocol: what the control socket serves and the console speaks.

Protocol, version 1
===================

HTTP/1.1 over the unix socket `[control] socket` (default: the database path with
`.sock`, so `var/dispatchd.sock`), created with mode 0600 so only the daemon's user
can connect, and removed on clean exit. Bodies are JSON. Errors are RFC 9457
problem details (`application/problem+json`) with `type`, `title`, `status`,
`detail` and a machine-readable `code`. Paths carry the version: a client of
version 1 checks `"protocol": 1` in the snapshot and uses `/v1/...` only.

Reading
-------
`GET /v1/snapshot` -> `200` Snapshot::

    {"protocol": 1, "instance": "<random id of this daemon run>", "pid": 123,
     "started_at": <epoch s>, "uptime_s": 12.3, "seq": <last event number>,
     "providers": [Provider, ...], "queue": Queue | null,
     "rates": [{"at": <epoch s>, "accepted": n, "sent": n, "delivered": n, "failed": n}, ...],
     "recent": [Event, ...]}

Provider: `name`, `state` (`healthy` | `degraded` | `circuit_open` | `paused`;
`circuit_open` while the breaker is open or half-open, `degraded` while traffic is
shifted away or calls fail), `paused`, `configured_weight`, `weight` (after operator
changes), `weight_factor` (share of it the traffic shift leaves, 1 - max_shift to 1)
and `shift_reason`, `effective_weight` (weight x factor; 0 while paused or open),
`breaker` (`closed` | `open` | `half_open`), `breaker_reason`, `breaker_until`
(epoch s when an open breaker lets probes through, else null), and over the
last 60 s: `calls`, `share` (of all provider calls), `success_rate`, `p50_ms`,
`p95_ms`; also `in_flight`, `last_error`, `last_error_at`; and the limits: `rate`
(segments per second, 0 unlimited), `max_in_flight`, `throttled` (throttle answers so
far) and `held_until` (epoch s while a throttle answer holds the provider, else null).
Queue: `counts` (every status, zeros included), `oldest_queued_age_s`,
`waiting_retry` (queued again after an attempt found no provider).
`rates` are per-second counts, oldest first, up to five minutes; `failed` counts
every final non-delivery (failed, expired, invalid, unknown).

`GET /v1/events` -> WebSocket. Each text frame is one JSON Event
`{"type": ..., "seq": n, "at": <epoch s>, "payload": {...}}`. The first frame is
always `{"type": "snapshot", "seq": n, "payload": Snapshot}`; the frames after it
are the events numbered above `n`, in order, without gaps unless the subscriber
fell behind: each subscriber has a bounded queue, and when it overflows events
are dropped (delivery never waits for a console) and a frame
`{"type": "dropped", "seq": null, "payload": {"count": <total dropped so far>}}`
precedes the next event sent. Message events carry `id` and `number`:

- `accepted` (`segments`, `retry_of`), `sent` (`provider`, `attempt`, `latency_ms`),
  `failover` (`provider` that failed, `to`, `error`), `retry_scheduled` (`attempt`,
  `in_s`), `delivered` / `failed` / `invalid` from reports (`provider`, `via`:
  `"report"`), `failed` / `expired` / `invalid` from the worker (`code`, `error`),
  `unknown` when a sent message's report is overdue (`code`: `report_timeout`),
  `number_suppressed` (`also_invalidated`).
- Provider health: `breaker_opened`, `breaker_half_open`, `breaker_closed` and
  `weight_shifted`, each with `provider`, `from`, `to` (breaker states, or weight
  factors as percentages), `reason`, `effective_weight`, `weight_factor`.
- Operator changes: `provider_paused`, `provider_resumed` (`provider`),
  `provider_weight` (`provider`, `weight`, `previous`), `suppression_lifted`
  (`number`), `message_retried` (`id`, `new_id`).
- Coalesced, never kept in `recent`: `stats` once a second (`rates`: the last
  second's sample, `providers`, `uptime_s`) and `queue` every two seconds (Queue),
  both only while someone is subscribed.

`GET /v1/messages/{id}` -> `200` the message as the HTTP API renders it, with
`attempts` and `history`; `404 message_not_found`.
`GET /v1/messages?to_number=N&limit=L` -> `200 {"items": [...]}`, newest first
(L from 1 to 100, default 20); `422 validation_failed` for a bad number.

Commands
--------
- `POST /v1/providers/{name}/pause`, `POST /v1/providers/{name}/resume` -> `200`
  Provider; `404 unknown_provider`. Takes effect for the next routing decision;
  with every provider paused, messages wait in the queue (they are not failed).
- `PUT /v1/providers/{name}/weight` with `{"weight": 0..1000000}` -> `200` Provider;
  `404 unknown_provider`, `422 bad_weight`, `400 malformed_request`.
- `POST /v1/messages/{id}/retry` -> `202 {"message": <new message>, "retry_of": id}`.
  Final statuses never change, so the retry is a new message with the same number
  and text; the original gains a history note naming it. `404 message_not_found`,
  `409 not_retryable` (only failed, expired or unknown messages), `422 number_suppressed`.
- `DELETE /v1/suppressions/{number}` -> `200 {"number": <E.164>, "lifted": true}`;
  `404 not_suppressed`, `422 validation_failed`.
- `POST /v1/backup` with `{"path": "/absolute/path"}` -> `200 {"path": <file written>,
  "bytes": n, "seconds": s, "messages": n, "started_at": <epoch s>, "integrity": "ok"}`
  once a consistent copy of the database is complete. A path that is a directory gets
  `dispatchd-YYYYmmddTHHMMSSZ.db` in it; an existing file there is replaced only by a
  complete copy that passed `PRAGMA integrity_check`. The copy holds everything committed
  before `started_at`; accepts go on meanwhile. The daemon writes the file, so the path
  must be writable by its user. `400 malformed_request` (not a JSON object), `422 bad_path`
  (no path, or a relative one), `409 backup_running` (one at a time), `409
  backup_unsupported` (an in-memory store), `503 backup_failed` (`detail` says why:
  no such directory, not writable, disk full, failed check, the daemon stopping).

Pauses and weights live in memory and are logged (`event=provider_paused` ...);
a restart returns to the configuration's weights with every provider active.
Lifted suppressions and retries are stored and survive restarts.
"""

from __future__ import annotations

from typing import Any, Final

PROTOCOL_VERSION: Final = 1
# The host part is ignored over a unix socket, but HTTP wants one.
BASE_URL: Final = "http://dispatchd"

Json = dict[str, Any]
