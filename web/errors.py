"""One family of API errors, turned into `{"error": "…"}` JSON in one place (web/app.py)."""

from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    """An answer other than success: an HTTP status, a message for the caller, extra headers."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None,
                 details: list | None = None, extra: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.details = details
        self.extra = extra or {}

    def body(self) -> dict:
        body: dict = {"error": self.message, **self.extra}
        if self.details:
            body["details"] = self.details
        return body
