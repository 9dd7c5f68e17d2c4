"""Provider kinds: one module each, behind the small interface in `base`.

- `dispatchd`: the take-home assignment's wire format, which the simulator speaks.
- `twilio`: Twilio's Programmable Messaging REST API and its signed status callbacks.
- `smpp`: SMPP 3.4 sessions to an SMSC (`smpp_pdu` and `smpp_receipts` are its pure parts).
- `http`: the I/O every HTTP kind shares; `registry`: a configured provider's connector.
"""
