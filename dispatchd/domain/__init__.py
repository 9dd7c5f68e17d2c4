"""Pure values and decisions: no I/O, no asyncio; clocks and randomness are passed in."""
