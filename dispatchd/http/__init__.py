"""The HTTP API: routes, request parsing, rendering, problem+json, auth, live status, OpenAPI."""
