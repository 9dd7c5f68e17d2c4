"""The one error hierarchy of dispatchd; each docstring is the default message."""

from __future__ import annotations

from dataclasses import dataclass


class DispatchdError(Exception):
    """Something went wrong in dispatchd."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        super().__init__(self.message)


class ConfigError(DispatchdError):
    """The configuration is not valid."""


class StoreError(DispatchdError):
    """The database cannot be used."""


class StoreUnavailable(StoreError):
    """The database cannot take writes right now; try again shortly."""


class StoreLocked(StoreError):
    """Another dispatchd process is using this database."""


class ProviderError(DispatchdError):
    """A provider did not accept the message."""

    def __init__(self, message: str | None = None, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class ProviderUnavailable(ProviderError):
    """The provider is unavailable (5xx, 408, 429, timeout or connection error); try another."""


class ProviderRejected(ProviderError):
    """The provider rejected the message (4xx); retrying it there will not help."""


class ControlSocketError(DispatchdError):
    """The operator control socket cannot be opened."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """What is wrong with one field of a request."""

    field: str
    code: str
    message: str


class ValidationFailed(DispatchdError):
    """The request has invalid fields."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(" ".join(e.message for e in errors))
        self.errors = errors


class NumberSuppressed(DispatchdError):
    """The number was reported invalid earlier, so messages to it are refused."""


class UnknownMessage(DispatchdError):
    """There is no such message."""


class BadToken(DispatchdError):
    """The callback token is missing or wrong."""


class NotRetryable(DispatchdError):
    """Only failed, expired or unknown messages can be retried."""


class NotSuppressed(DispatchdError):
    """The number is not suppressed."""
