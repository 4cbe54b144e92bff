"""KMS's errors as the JSON 1.1 protocol sends them: an exception name and a message."""

from __future__ import annotations

from nitro_attest.errors import TransportError


class KmsApiError(TransportError):
    """An error answer as KMS sends it: ``__type`` is ``type_name``, HTTP ``status`` (400 unless
    the service itself failed). On the TransportError branch, like the client's ``KmsError``
    that reads it."""

    def __init__(self, type_name: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.status = status

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


def validation(message: str) -> KmsApiError:
    return KmsApiError("ValidationException", message)


def not_found(message: str) -> KmsApiError:
    return KmsApiError("NotFoundException", message)
