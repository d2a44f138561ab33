"""The hand-written check of a delivery report agrees with StatusReportRequest on every input."""

import itertools

import pytest
from pydantic import ValidationError

from web.models import StatusReportRequest, report_fields

MESSAGE_IDS = ["msg_1", "m", "x" * 64, "x" * 65, "", "é" * 64, "é" * 65, 12, None, ["msg_1"], {"a": 1}, True]
STATUSES = ["sent", "delivered", "failed", "queued", "SENT", "", 1, None, ["sent"], {"sent": 1}]
ERRORS = ["__missing__", None, "", "no signal", "e" * 500, "e" * 501, 5, ["x"], False]


def _pydantic(data: dict):
    try:
        body = StatusReportRequest.model_validate(data)
    except ValidationError:
        return "refused"
    return body.message_id, body.status, body.error_message


def _fast(data: dict):
    try:
        return report_fields(data)
    except ValidationError:
        return "refused"


@pytest.mark.parametrize("message_id,status", list(itertools.product(MESSAGE_IDS, STATUSES)))
def test_report_fields_agree_with_the_model(message_id, status):
    for error in ERRORS:
        data = {"action": "delivery_report", "message_id": message_id, "status": status, "extra": [1]}
        if error != "__missing__":
            data["error_message"] = error
        assert _fast(data) == _pydantic(data), data


def test_missing_fields_are_refused_with_pydantic_words():
    with pytest.raises(ValidationError) as caught:
        report_fields({"action": "delivery_report", "status": "sent"})
    assert caught.value.errors()[0]["loc"] == ("message_id",)
