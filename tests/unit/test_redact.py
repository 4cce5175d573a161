"""The one redaction helper (issue 15): credentials in URIs never reach answers, logs, records."""

from __future__ import annotations

import logging

import pytest

from vigil.redact import RedactingFilter, redact, redact_obj


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:pa:ss@h/db", "postgresql://u:***@h/db"),
        (
            "cannot reach http://bob:s3cr3t@mlflow:5000/api/2.0 (refused)",
            "cannot reach http://bob:***@mlflow:5000/api/2.0 (refused)",
        ),
        ("https://ghp_0123456789abcdefXYZ@github.com/x", "https://***@github.com/x"),
        ("postgresql://vigil@db/x", "postgresql://vigil@db/x"),
        ("https://h/x?token=abc&b=1&sig=zz", "https://h/x?token=***&b=1&sig=***"),
        ("s3://b/k?X-Amz-Signature=ab&X-Amz-Credential=c", "s3://b/k?X-Amz-Signature=***&X-Amz-Credential=***"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("models:/vigil-capsules-image@champion", "models:/vigil-capsules-image@champion"),
    ],
)
def test_uris_lose_their_secrets_and_keep_the_rest(text, expected):
    assert redact(text) == expected


def test_structures_and_log_records_are_redacted():
    record = {"error": {"message": "x http://u:pw@h/"}, "n": 3, "list": ["https://h/?token=t"]}
    assert redact_obj(record) == {
        "error": {"message": "x http://u:***@h/"},
        "n": 3,
        "list": ["https://h/?token=***"],
    }
    log_record = logging.LogRecord("x", logging.ERROR, __file__, 1, "cannot reach %s", ("http://u:pw@h",), None)
    assert RedactingFilter().filter(log_record)
    assert log_record.getMessage() == "cannot reach http://u:***@h"
