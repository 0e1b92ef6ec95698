"""Secrets never reach a log line, a journal field or a result file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from azagent import journal, redact
from azagent.errors import StageFailed
from azagent.plan import Plan
from azagent.stage import main

PRIVATE_KEY = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACBQ0Wg2xg8Vxk0Bq0xhYfVbU8k2u0p2Z1yqkLx7KQK7IwAAAJg4w3ZQ
-----END OPENSSH PRIVATE KEY-----"""
SHA512_HASH = "$6$aB3dE5gH7j$R0lN9q8iEoQH3u0y0T2m7p1k0y7e2Qn4mYj2J1G9bXl1T1q3sQzJ6Wc7Lh8Fv"
SAS_URL = (
    "https://md-hdd.blob.core.windows.net/$system/vm.status"
    "?sv=2018-03-28&sr=b&sk=system-1&sig=Zm9vYmFyYmF6cXV4%3D&se=9999-01-01T00%3A00%3A00Z&sp=rw"
)


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    redact.forget_all()
    yield
    redact.forget_all()


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"key: {PRIVATE_KEY} end", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"),
        (f"root:{SHA512_HASH}:19000:0:99999:7:::", "R0lN9q8iEoQH3u0y0T2m7p1k0y7e2Qn4"),
        ("hash $1$salt$qJH7.N4xYta3aEG/dfqo/0", "qJH7.N4xYta3aEG"),
        ("hash $2b$12$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234", "ABCDEFGHIJKLMNOP"),
        (f"uploading to {SAS_URL} now", "Zm9vYmFyYmF6cXV4"),
        ("<ns1:UserPassword>hunter2!</ns1:UserPassword>", "hunter2!"),
        ('<CustomData encoding="base64">IyEvYmluL3NoCmVjaG8gaGk=</CustomData>', "IyEvYmluL3No"),
        ('{"protectedSettings": "MIIBsQYJKoZIhvcNAQcDoIIBojCC", "x": 1}', "MIIBsQYJKoZ"),
        ("login with password=hunter22 please", "hunter22"),
    ],
)
def test_known_secret_shapes_are_redacted(text: str, secret: str) -> None:
    assert secret in text
    cleaned = redact.redact(text)
    assert secret not in cleaned
    assert "redacted" in cleaned


def test_sas_url_keeps_its_path() -> None:
    cleaned = redact.redact(SAS_URL)
    assert cleaned == "https://md-hdd.blob.core.windows.net/$system/vm.status?<redacted>"


def test_ordinary_text_is_untouched() -> None:
    text = "set the SCSI timeout of sda from 30 s to 300 s; price $6 today; a=b?c"
    assert redact.redact(text) == text


def test_registered_values_and_their_lines_are_redacted() -> None:
    redact.register("correct horse battery staple")
    redact.register("#!/bin/sh\necho customdata-line-two\n")
    redact.register("ab")  # too short to register: would redact ordinary text
    assert "horse" not in redact.redact("pw 'correct horse battery staple' given")
    assert "customdata-line-two" not in redact.redact("ran: echo customdata-line-two")
    assert redact.redact("ab cd") == "ab cd"


def test_secret_wrapper_never_prints() -> None:
    secret = redact.Secret("s3cr3t-value")
    assert str(secret) == "<redacted>"
    assert "s3cr3t" not in repr(secret)
    assert "s3cr3t" not in f"{secret}"
    assert secret.reveal() == "s3cr3t-value"
    assert "s3cr3t" not in redact.redact("formatted by hand: s3cr3t-value")


def test_stderr_logging_redacts_arguments_and_tracebacks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    journal.setup("test", verbose=True, journal=False)
    redact.register("hunter2-password")
    journal.log.info("user password is %s", "hunter2-password", extra={"REASON": SAS_URL})
    try:
        raise ValueError(f"bad hash {SHA512_HASH}")
    except ValueError:
        journal.log.exception("failed")
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert "Zm9vYmFyYmF6cXV4" not in err
    assert "R0lN9q8iEoQH3u0y0T2m7p1k0y7e2Qn4" not in err
    assert "azagent[test]: user password is <redacted>" in err
    assert "REASON=" in err
    assert "Traceback" in err


def test_failure_reason_in_result_file_is_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def plan(ctx: object) -> Plan:
        result = Plan()

        def fail() -> None:
            raise StageFailed(f"could not hash password=Sup3rS3cret for user; key {PRIVATE_KEY}")

        result.add("hash the password", fail)
        return result

    status = main("secret-test", "test", plan, ["--root", str(tmp_path)])
    assert status == 1
    recorded = (tmp_path / "run/azagent/stages/secret-test.json").read_text()
    assert json.loads(recorded)["state"] == "failed"
    assert "Sup3rS3cret" not in recorded
    assert "b3BlbnNzaC1rZXkt" not in recorded
    err = capsys.readouterr().err
    assert "Sup3rS3cret" not in err
    assert "b3BlbnNzaC1rZXkt" not in err
    assert "could not hash" in err


def test_url_credentials_are_redacted() -> None:
    cleaned = redact.redact("proxy http://bob:s3cretpw@proxy.example:3128 used")
    assert "s3cretpw" not in cleaned
    assert "proxy.example:3128" in cleaned
