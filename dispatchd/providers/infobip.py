"""The `infobip` kind: Infobip's SMS API v3 (`/sms/3/messages`) and its delivery reports.

Send: `POST {url}/sms/3/messages`, JSON `{"messages": [{"sender", "destinations": [{"to"}],
"content": {"text"}, "options": {"validityPeriod"}, "webhooks": {"delivery": {"url"},
"callbackData"}}]}`, `Authorization: App {api_key}`. `url` is the account's own Base URL
(`https://xxxxx.api.infobip.com`, shown in the Infobip portal); there is no shared public
endpoint to default to. Numbers go out in international format without the `+`, as every
example in Infobip's API reference writes them. `callbackData` carries dispatchd's message
id, which Infobip echoes in every report of the message.

A 200 answers `{"bulkId", "messages": [{"messageId", "status": {"groupId", "groupName",
"id", "name", "description"}, "destination", "details"}]}`. Its status is an acceptance in
the PENDING group, not an outcome (infobip.com/docs/developer-resources/api-fundamentals/
message-status-codes), so the message is `Accepted` with `messages[0].messageId` as the
provider id, unless the status is in the REJECTED group: then `REJECTED_STATUSES` says
whether it concerns the account (`Unavailable`) or this message (`Rejected`). Request
errors are `ApiError` JSON `{"errorCode", "description", "action", "violations",
"resources"}` (E400, E401, E403, E429, E500 in the API reference's examples); some older
endpoints answer `{"requestError": {"serviceException": {"messageId", "text"}}}`, read too.

Reports: Infobip POSTs JSON `{"results": [...]}` to `webhooks.delivery.url`, batched (100
results a request by default), one result per message: `messageId`, `status`, `error`
`{"groupId", "groupName", "id", "name", "description", "permanent"}`, `to`, `sender`,
`callbackData`, `sentAt`, `doneAt`, `messageCount`, `price`. `parse` returns one Report
per result. The status group decides (`STATUS_GROUPS`): DELIVERED_TO_HANDSET (id 5) is
delivered; DELIVERED_TO_OPERATOR (id 2) is intermediate ("a further DLR may follow"), as
is every PENDING status; UNDELIVERABLE, REJECTED and EXPIRED are failed, turned into
`invalid` only by an error in `INVALID_NUMBER_ERRORS`.

Verify: none. Infobip signs nothing it sends to a per-message `webhooks.delivery.url`
(the API reference's webhook has no security scheme). Only account-level subscriptions
(Subscriptions API) can carry credentials (BASIC, HMAC, OAUTH, or mTLS), and the HMAC
variant's header and signed bytes are not documented, so there is nothing to check it
against. A report is authenticated by dispatchd's per-message token in its URL alone.

Throttling: HTTP 429 `{"errorCode": "E429"}` ("back off and retry"): `Throttled`.
Ambiguity: a timeout or 5xx after the request was written may mean Infobip queued the
message; dispatchd fails over anyway (at least once).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from dispatchd.domain.models import Status
from dispatchd.providers.base import (
    Accepted,
    BadReport,
    HttpRequest,
    IncomingReport,
    Outcome,
    Rejected,
    Report,
    Submission,
    Throttled,
    Unavailable,
    retry_after,
)

SEND_PATH = "/sms/3/messages"
JSON = "application/json"
AUTH_SCHEME = "App"
# ValidityPeriod: "longer than 48h is not supported. If exceeded, it will be automatically
# set to 48h" (the API reference's ValidityPeriod schema); sent in SECONDS.
VALIDITY_MIN = 1
VALIDITY_MAX = 48 * 3600
# webhooks.callbackData: "The maximum value is 4000 characters."
CALLBACK_DATA_MAX = 4000
# Far above Infobip's ids (a 36-character UUID-like string); refuses garbage, not new formats.
MAX_ID_LENGTH = 200
MAX_TEXT = 200
MAX_RESULTS = 10_000

# -- mapping tables (pure data; the README's tables are generated from / checked against them)

# Status group name -> dispatchd status, for every group but DELIVERED (by status name).
# infobip.com/docs/developer-resources/api-fundamentals/message-status-codes: "PENDING_*:
# Intermediate. Message is in flight." "UNDELIVERABLE_*, EXPIRED_*, REJECTED_*: final."
STATUS_GROUPS: Mapping[str, Status | None] = MappingProxyType(
    {
        # The legacy v1/v2 acceptance group (groupId 0); never final.
        "ACCEPTED": None,
        "PENDING": None,
        # Turned into `invalid` only by an error in INVALID_NUMBER_ERRORS.
        "UNDELIVERABLE": Status.FAILED,
        "REJECTED": Status.FAILED,
        # A carrier or Infobip expiry, not dispatchd's own `expired` (PROVIDERS.md).
        "EXPIRED": Status.FAILED,
    }
)
# The API reference's status group ids, for a status that carries no groupName.
GROUP_IDS: Mapping[int, str] = MappingProxyType(
    {0: "ACCEPTED", 1: "PENDING", 2: "UNDELIVERABLE", 3: "DELIVERED", 4: "EXPIRED", 5: "REJECTED"}
)
# The DELIVERED group's statuses, by name (message-status-codes: "DELIVERED_TO_OPERATOR (id 2)
# Intermediate. Reached the operator, not yet the handset. A further DLR may follow."
# "DELIVERED_TO_HANDSET (id 5) Final."). Any other DELIVERED name is recorded and waits.
DELIVERED_STATUSES: Mapping[str, Status | None] = MappingProxyType(
    {
        "DELIVERED_TO_HANDSET": Status.DELIVERED,
        "DELIVERED_TO_OPERATOR": None,
    }
)
DELIVERED_IDS: Mapping[int, str] = MappingProxyType(
    {5: "DELIVERED_TO_HANDSET", 2: "DELIVERED_TO_OPERATOR"}
)

# Error names that mean the number itself is bad. Each suppresses the number everywhere,
# so a name is here only when its documented cause is the number and nothing else
# (infobip.com/docs/developer-resources/api-fundamentals/error-code-reference).
INVALID_NUMBER_ERRORS: Mapping[str, str] = MappingProxyType(
    {
        # Handset errors, group 1, id 1, permanent: "the subscriber or recipient of the
        # message is unknown or not recognized by the network".
        "EC_UNKNOWN_SUBSCRIBER": "The recipient is unknown to the network",
    }
)

# Documented on purpose as *not* invalid, with why (checked by the tests, shown in the README).
NOT_INVALID_ERRORS: Mapping[str, str] = MappingProxyType(
    {
        # id 5, permanent false: "an invalid or unregistered number, incomplete or
        # incorrect subscriber information, or technical issues": not only the number.
        "EC_UNIDENTIFIED_SUBSCRIBER": "Unidentified subscriber (may be technical)",
        # id 9, permanent: authentication failed, "often due to the number being
        # blocklisted": a barred line, not a wrong number.
        "EC_ILLEGAL_SUBSCRIBER": "Illegal subscriber (failed authentication, blocklisted)",
        # id 11, permanent: the subscription lacks SMS, which the operator may activate.
        "EC_TELESERVICE_NOT_PROVISIONED": "The subscription has no SMS service",
        # id 629, permanent: the address cannot take SMS now; the docs give no cause.
        "EC_DEST_ADDRESS_UNABLE_TO_RECEIVE_SMS": "The destination cannot receive SMS",
        # ids 6 and 27: powered off or out of coverage, temporary.
        "EC_ABSENT_SUBSCRIBER": "Absent subscriber (temporary)",
        "EC_ABSENT_SUBSCRIBER_SM": "Absent subscriber for SMS (temporary)",
        # id 13: service suspended by the operator (unpaid invoices).
        "EC_CALL_BARRED": "Call barred by the operator",
    }
)

# Status names of the REJECTED group, as a send answer or a report carries them
# (infobip.com/docs/essentials/api-essentials/response-status-and-error-codes).
# "account": about the account or the sender, so every message would fail alike; counts
# against the breaker and the traffic goes elsewhere. "message": this message only; the
# next provider may take it. A name not listed is "message".
REJECTED_STATUSES: Mapping[str, str] = MappingProxyType(
    {
        "REJECTED_NETWORK": "message",  # 6: network not covered or not set up on the account
        # 8 and 52: Infobip's prefix tables do not know the number. Not invalid: those tables
        # are Infobip's and lag new number ranges, and another provider may route it.
        "REJECTED_PREFIX_MISSING": "message",
        "REJECTED_DESTINATION": "message",
        "REJECTED_DND": "message",  # 10: the recipient subscribed to Do Not Disturb
        "REJECTED_SOURCE": "account",  # 11: the account takes only registered sender ids
        "REJECTED_NOT_ENOUGH_CREDITS": "account",  # 12
        "REJECTED_SENDER": "account",  # 13: the sender is blocklisted on the account
        "REJECTED_DESTINATION_BLOCKLISTED": "message",  # 14
        "REJECTED_PREPAID_PACKAGE_EXPIRED": "account",  # 17
        "REJECTED_DESTINATION_NOT_REGISTERED": "message",  # 18: a test account's one number
        "REJECTED_ROUTE_NOT_AVAILABLE": "account",  # 19: no routes set up on the account
        "REJECTED_FLOODING_FILTER": "message",  # 20: too many messages to this number
        "REJECTED_SYSTEM_ERROR": "account",  # 21: "Retry the submission"
        "REJECTED_DUPLICATE_MESSAGE_ID": "message",  # 23
        "REJECTED_INVALID_UDH": "message",  # 24
        "REJECTED_MESSAGE_TOO_LONG": "message",  # 25: over 25 parts or 4000 bytes
        "MISSING_TO": "message",  # 51
        "SIGNALS_BLOCKED": "message",  # 87: anti-fraud
        "UNDELIVERABLE_REJECTED_PLATFORM": "account",  # 100: "or the service is temporarily
        # unavailable ... try again when the service is accessible"
    }
)


@dataclass(frozen=True, slots=True)
class InfobipSettings:
    """One Infobip account as dispatchd sends through it."""

    api_key: str = field(repr=False)
    url: str
    from_: str | None = None  # the sender; Infobip uses the account's default when absent

    def __post_init__(self) -> None:
        if not self.api_key or not self.api_key.strip():
            raise ValueError("api_key: required (an Infobip API key, sent as 'App <key>')")
        if not self.url or not self.url.strip():
            raise ValueError(
                "url: required, the account's own Base URL from the Infobip portal "
                "(https://xxxxx.api.infobip.com)"
            )
        parts = urlsplit(base_url(self.url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url: not an http(s) URL: {self.url!r}")
        if parts.query or parts.fragment:
            raise ValueError("url: the Base URL takes no query or fragment")
        if self.from_ is not None and not self.from_.strip():
            raise ValueError("from: empty; leave it out to use the account's default sender")


class Infobip:
    """The pure half of the `infobip` kind (see the module docstring)."""

    # Account-level reports (no per-message token) are taken only if this is True:
    # delivery reports are not signed.
    signs_body = False

    def __init__(self, settings: InfobipSettings) -> None:
        self._settings = settings
        self._url = base_url(settings.url) + SEND_PATH
        self._authorization = f"{AUTH_SCHEME} {settings.api_key.strip()}"

    def request(self, submission: Submission) -> HttpRequest:
        message: dict[str, Any] = {}
        if self._settings.from_:
            message["sender"] = self._settings.from_
        message["destinations"] = [{"to": destination(submission.to_number)}]
        message["content"] = {"text": submission.body}
        if submission.validity is not None:
            seconds = validity_seconds(submission.validity)
            message["options"] = {"validityPeriod": {"amount": seconds, "timeUnit": "SECONDS"}}
        message["webhooks"] = {
            "delivery": {"url": submission.report_url},
            "contentType": JSON,
            "callbackData": submission.message_id[:CALLBACK_DATA_MAX],
        }
        body = json.dumps({"messages": [message]}, ensure_ascii=False, separators=(",", ":"))
        headers = {
            "Authorization": self._authorization,
            "Content-Type": JSON,
            "Accept": JSON,
        }
        return HttpRequest("POST", self._url, headers, body.encode("utf-8"))

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        if 200 <= status < 300:
            return _accepted(status, body)
        code, text = api_error(body)
        reason = f"HTTP {status}, Infobip {code}: {text}" if code else f"HTTP {status}: {text}"
        if status == 429 or code in ("E429", "TOO_MANY_REQUESTS"):
            return Throttled(reason, status, retry_after(_header(headers, "Retry-After")))
        if status >= 500 or status == 408:
            return Unavailable(reason, status)
        if status in (401, 403, 404):
            # Bad or revoked key, missing scope, or a wrong Base URL: every message alike.
            return Unavailable(reason, status)
        return Rejected(reason, status, code)

    def verify(self, report: IncomingReport, now: float) -> None:
        # Nothing to check: Infobip signs no SMS delivery report (see the module docstring).
        # The report URL's per-message token, checked by the service, authenticates it.
        return None

    def parse(self, report: IncomingReport) -> list[Report]:
        media = report.content_type.split(";", 1)[0].strip().lower()
        if media not in ("", JSON):
            raise BadReport(f"expected a JSON delivery report, got {media}")
        try:
            data = json.loads(report.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadReport("the body is not JSON") from exc
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise BadReport("no 'results' array")
        if len(results) > MAX_RESULTS:
            raise BadReport(f"more than {MAX_RESULTS} results in one report")
        return [_result(entry, i) for i, entry in enumerate(results)]


# -- pure helpers, public for the simulator and the tests -------------------------------------


def base_url(url: str) -> str:
    """The Base URL with a scheme (the portal shows it without one) and no trailing slash."""
    url = url.strip()
    if "://" not in url:
        url = "https://" + url
    return url.rstrip("/")


def destination(to_number: str) -> str:
    """An E.164 number as Infobip's examples write it: international format, no `+`."""
    return to_number.strip().removeprefix("+")


def validity_seconds(seconds: float) -> int:
    """Whole seconds for `validityPeriod`, within 1 s .. Infobip's 48 h ceiling."""
    # Rounded down so Infobip never holds a message past dispatchd's own validity.
    whole = math.floor(seconds) if math.isfinite(seconds) else VALIDITY_MAX
    return max(VALIDITY_MIN, min(VALIDITY_MAX, whole))


def report_status(
    group: str | None,
    name: str | None,
    error_name: str | None,
    *,
    status_id: int | None = None,
) -> Status | None:
    """dispatchd's status for an Infobip status group and name and the report's error name.

    None: intermediate, or a group Infobip may add later (recorded, the message waits).
    `status_id` names a DELIVERED status that came without its name.
    """
    group = _upper(group)
    name = _upper(name) or (DELIVERED_IDS.get(status_id) if status_id is not None else None)
    if group == "DELIVERED":
        return DELIVERED_STATUSES.get(name) if name else None
    status = STATUS_GROUPS.get(group) if group else None
    if status is Status.FAILED and _upper(error_name) in INVALID_NUMBER_ERRORS:
        return Status.INVALID
    return status


def api_error(body: bytes) -> tuple[str | None, str]:
    """The error code and a readable text of an Infobip error answer (either format)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body[:MAX_TEXT].decode("utf-8", "replace").strip()
        return None, text or "no detail"
    if not isinstance(data, dict):
        return None, "no detail"
    code = _text(data.get("errorCode"))
    if code:
        parts = [_text(data.get("description")) or "no detail"]
        violations = data.get("violations")
        if isinstance(violations, list):
            parts += [
                f"{_text(v.get('property')) or '?'}: {_text(v.get('violation')) or '?'}"
                for v in violations[:5]
                if isinstance(v, dict)
            ]
        return code, "; ".join(parts)[:MAX_TEXT]
    # {"requestError": {"serviceException": {"messageId", "text"}}}: the older APIs.
    legacy = data.get("requestError")
    exc = legacy.get("serviceException") if isinstance(legacy, dict) else None
    if isinstance(exc, dict):
        return _text(exc.get("messageId")), (_text(exc.get("text")) or "no detail")
    return None, "no detail"


def _accepted(status: int, body: bytes) -> Outcome:
    """A 2xx: accepted with messages[0]'s id, unless that message's status is a rejection."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    messages = data.get("messages") if isinstance(data, dict) else None
    first = messages[0] if isinstance(messages, list) and messages else None
    if not isinstance(first, dict):
        # Taken as accepted even without a readable id: resending could deliver it twice,
        # and its reports still reach the per-message URL.
        return Accepted(None, status)
    state = first.get("status")
    if isinstance(state, dict) and _group_of(state) == "REJECTED":
        name = _upper(_text(state.get("name"))) or "REJECTED"
        text = _text(state.get("description")) or name
        reason = f"HTTP {status}, Infobip {name}: {text}"
        if REJECTED_STATUSES.get(name) == "account":
            return Unavailable(reason, status)
        return Rejected(reason, status, name)
    return Accepted(_id(first.get("messageId")), status)


def _result(entry: Any, index: int) -> Report:
    if not isinstance(entry, dict):
        raise BadReport(f"results[{index}] is not an object")
    message_id = _id(entry.get("messageId"))
    if message_id is None:
        raise BadReport(f"results[{index}] has no usable messageId")
    state = entry.get("status")
    if not isinstance(state, dict):
        raise BadReport(f"results[{index}] has no status object")
    group = _group_of(state)
    name = _upper(_text(state.get("name")))
    if not group and not name:
        raise BadReport(f"results[{index}] has neither a status name nor a group")
    error = entry.get("error")
    error_name: str | None = None
    if isinstance(error, dict):
        error_name = _upper(_text(error.get("name")))
        if error_name is None and isinstance(error.get("id"), int):
            error_name = str(error["id"])
    status_id = state.get("id") if isinstance(state.get("id"), int) else None
    mapped = report_status(group, name, error_name, status_id=status_id)
    code = None if error_name in (None, "NO_ERROR", "0") else error_name
    return Report(message_id, mapped, name or group or "", code)


def _group_of(state: Mapping[str, Any]) -> str | None:
    """A status object's group name, from groupName or else the documented groupId."""
    group = _upper(_text(state.get("groupName")))
    if group:
        return group
    group_id = state.get("groupId")
    return GROUP_IDS.get(group_id) if isinstance(group_id, int) else None


def _id(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value.strip()) <= MAX_ID_LENGTH:
        return value.strip()
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()[:MAX_TEXT]
    return None


def _upper(value: str | None) -> str | None:
    return value.strip().upper() if value and value.strip() else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # aiohttp's headers are case-insensitive; a plain dict (tests, other callers) is not.
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)
