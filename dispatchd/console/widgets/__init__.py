"""The console's widgets, one a module, and the formatting they share.

- `status_bar`: connection state, daemon identity, what the console drops or holds.
- `provider_table`: one row per provider.
- `queue_panel`: counts by status, oldest queued, waiting for retry.
- `throughput`: per-second sparklines.
- `traffic_log`: the live event log, its `LogEntry` lines and `describe` (event -> line).
- `format`: times, durations and percentages as shown, and the status colours.
"""
