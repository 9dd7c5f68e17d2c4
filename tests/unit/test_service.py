"""The service's use cases on the in-memory store: accept, reports, suppression, retry."""

from __future__ import annotations

import pytest

from dispatchd.config import DeliveryConfig, WebhooksConfig
from dispatchd.domain.errors import (
    BadToken,
    NotRetryable,
    NotSuppressed,
    NumberSuppressed,
    UnknownMessage,
    ValidationFailed,
)
from dispatchd.domain.models import DeliveryReport, Status
from dispatchd.events import Event, EventBus
from dispatchd.service import Service
from dispatchd.store.memory import MemoryStore
from tests.helpers import NOW, NUMBER, OTHER_NUMBER


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore(clock=clock)


@pytest.fixture
def events(clock: Clock) -> EventBus:
    return EventBus(clock=clock)


@pytest.fixture
def service(store: MemoryStore, events: EventBus, clock: Clock) -> Service:
    return Service(
        store,
        DeliveryConfig(max_age=600),
        WebhooksConfig(),
        public_url="http://dispatchd.test/",
        secret="s3cret",
        suppressed=set(),
        events=events,
        clock=clock,
    )


async def send(service: Service, number: str = NUMBER, text: str = "hi") -> str:
    msg = service.prepare(service.validate({"to_number": number, "message": text}))
    await service.accept([msg])
    return msg.id


async def test_an_accepted_message_is_stored_queued_and_announced(
    service: Service, events: EventBus
) -> None:
    seen: list[Event] = []
    events.add_listener(seen.append)
    msg_id = await send(service, "(703) 457-3322", "x" * 161)
    stored = await service.get(msg_id)
    assert stored is not None
    assert (stored.status, stored.to_number, stored.segments) == (Status.QUEUED, NUMBER, 2)
    assert stored.expires_at == NOW + 600
    assert [(e.type, e.payload["id"]) for e in seen] == [("accepted", msg_id)]


async def test_a_send_at_in_the_future_is_due_then_and_valid_from_then(service: Service) -> None:
    fields = {"to_number": NUMBER, "message": "later", "send_at": "2027-01-15T09:00:00Z"}
    msg = service.prepare(service.validate(fields))
    assert msg.next_attempt_at == msg.send_at == NOW + 3600
    assert msg.expires_at == NOW + 3600 + 600


async def test_validation_lists_every_problem(service: Service) -> None:
    with pytest.raises(ValidationFailed) as caught:
        service.validate({"to_number": "12"})
    assert [e.field for e in caught.value.errors] == ["to_number", "message"]


async def test_reports_need_the_messages_token(service: Service) -> None:
    msg_id = await send(service)
    report = DeliveryReport(Status.DELIVERED, "p-1")
    with pytest.raises(BadToken):
        await service.report(msg_id, report, "0" * 32)
    with pytest.raises(BadToken):
        await service.report(msg_id, report, None)
    with pytest.raises(UnknownMessage):
        await service.report("nope", report, service.token("nope"))
    await service.report(msg_id, report, service.token(msg_id))
    assert await service.status(msg_id) is Status.DELIVERED
    assert service.callback_url(msg_id).startswith(
        f"http://dispatchd.test/messages/{msg_id}/delivery_status?token="
    )


async def test_an_invalid_report_suppresses_the_number_until_lifted(service: Service) -> None:
    first = await send(service)
    queued_sibling = await send(service)
    other = await send(service, OTHER_NUMBER)
    await service.report(first, DeliveryReport(Status.INVALID, "p-1"), service.token(first))
    # The queued message to the same number ends invalid with it; others are untouched.
    assert await service.status(queued_sibling) is Status.INVALID
    assert await service.status(other) is Status.QUEUED
    with pytest.raises(NumberSuppressed):
        await send(service)
    assert await service.lift_suppression("(703) 457-3322") == NUMBER
    await send(service)
    with pytest.raises(NotSuppressed):
        await service.lift_suppression(NUMBER)


async def test_finals_stay_final_and_a_late_report_is_only_recorded(service: Service) -> None:
    msg_id = await send(service)
    token = service.token(msg_id)
    await service.report(msg_id, DeliveryReport(Status.FAILED, "p-1"), token)
    result = await service.report(msg_id, DeliveryReport(Status.DELIVERED, "p-1"), token)
    assert not result.applied
    assert await service.status(msg_id) is Status.FAILED
    history = await service.history(msg_id)
    assert "already final" in (history[-1].detail or "")


async def test_only_failed_or_expired_messages_are_retried_as_new_ones(service: Service) -> None:
    msg_id = await send(service)
    with pytest.raises(NotRetryable):
        await service.retry(msg_id)
    await service.report(msg_id, DeliveryReport(Status.FAILED, "p-1"), service.token(msg_id))
    again = await service.retry(msg_id)
    assert again.id != msg_id and again.to_number == NUMBER
    assert await service.status(again.id) is Status.QUEUED
    notes = [h.detail for h in await service.history(msg_id)]
    assert f"retried by the operator as {again.id}" in notes
    with pytest.raises(UnknownMessage):
        await service.retry("nope")
