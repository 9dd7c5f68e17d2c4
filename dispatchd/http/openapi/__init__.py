"""The OpenAPI 3.1 document describing the HTTP API (served at `GET /openapi.json`).

The enums come from the code (`Status`, `Outcome`, `Encoding`, `ErrorCode`), so they
cannot drift; everything else is written out by hand and checked against real responses
by `tests/integration/test_openapi.py`.

- `common`: constants, `_ref`/`_nullable`, and the responses and parameters shared by many
  operations (`_json`, `_problem`, `_DEFAULT`, `_ID_PARAM`...).
- `message_schemas`, `request_schemas`: the component schemas.
- `messages`, `reports`, `operations`: the path operations, by area, and the webhook.
- `security`: API-key security and `Idempotency-Key`, applied over the operations.
- `document`: assembles the document and serves copies of it.
"""

from __future__ import annotations

from dispatchd.http.openapi.document import openapi_document

__all__ = ["openapi_document"]
