"""`nudge sinks check`: every problem as file:line:col, credentials as warnings unless
--strict, non-zero exit on any error."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main

GOOD = """\
default: log
sinks:
  email:
    type: sendgrid
    api_key_env: NUDGE_T_SENDGRID_KEY
    from: {email: shop@example.com, name: Example Shop}
    templates: {cart_reminder: d-abc123}
  sms:
    type: twilio
    account_sid: ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
    auth_token_file: TOKEN_FILE
    from: "+15005550006"
    templates_dir: SMS_DIR
routes:
  - {channel: email, sink: email}
  - {channel: sms, sink: sms}
"""


def write(tmp_path: Path, text: str, name: str = "sinks.yaml") -> Path:
    sms = tmp_path / "sms"
    sms.mkdir(exist_ok=True)
    (sms / "cart_10pct.txt").write_text("$code\n")
    (tmp_path / "token").write_text("secret\n")
    f = tmp_path / name
    f.write_text(text.replace("TOKEN_FILE", str(tmp_path / "token")).replace("SMS_DIR", str(sms)))
    return f


def run(capsys: pytest.CaptureFixture[str], f: Path, *extra: str) -> tuple[int, str, list[str]]:
    rc = main(["sinks", "check", str(f), *extra])
    out, err = capsys.readouterr()
    return rc, out, [line.replace(str(f), "F") for line in err.strip().splitlines()]


def test_good_file_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NUDGE_T_SENDGRID_KEY", "SG.x")
    rc, out, err = run(capsys, write(tmp_path, GOOD))
    assert (rc, err) == (0, [])
    assert out.strip() == "ok: 1 file(s), 2 sink(s), 0 warning(s)"


def test_unset_credential_is_a_warning_unless_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NUDGE_T_SENDGRID_KEY", raising=False)
    f = write(tmp_path, GOOD)
    rc, out, err = run(capsys, f)
    assert rc == 0
    assert err == [
        "F:5:18: warning: $.sinks.email.api_key_env: "
        "environment variable NUDGE_T_SENDGRID_KEY is not set"
    ]
    assert "1 warning(s)" in out
    rc, _, err = run(capsys, f, "--strict")
    assert rc == 1
    assert err[0].startswith("F:5:18: $.sinks.email.api_key_env: environment variable")


def test_every_error_has_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NUDGE_T_SENDGRID_KEY", "SG.x")
    text = (
        GOOD.replace("from: {email: shop@example.com, name: Example Shop}", "from: {name: X}")
        .replace("templates_dir: SMS_DIR", "templates_dir: /nonexistent/sms")
        .replace("{channel: sms, sink: sms}", "{channel: sms, sink: texts}")
    )
    rc, _, err = run(capsys, write(tmp_path, text))
    assert rc == 1
    assert err == [
        "F:6:11: $.sinks.email.from.email: Field required",
        "F:13:20: $.sinks.sms.templates_dir: /nonexistent/sms is not a directory",
        "F:16:26: $.routes[1].sink: unknown sink 'texts'",
        "3 error(s), 0 warning(s)",
    ]


def test_unknown_type_and_yaml_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, write(tmp_path, "sinks:\n  q: {type: kafka}\n"))
    assert rc == 1
    assert err[0].startswith("F:2:13: $.sinks.q.type: unknown sink type 'kafka'")
    rc, _, err = run(capsys, write(tmp_path, "sinks: [\n"))
    assert rc == 1
    assert err[0].startswith("F:2:1: YAML syntax")


def test_json_file_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "sinks.json"
    f.write_text('{"default": "log",\n "sinks": {"crm": {"type": "webhook", "url": "x"}}}\n')
    rc, _, err = run(capsys, f)
    assert rc == 1
    assert err[0].startswith("F:2:46: $.sinks.crm.url: String should match pattern")
    rc, _, err = run(capsys, tmp_path / "nope.yaml")
    assert rc == 1
    assert err[0] == "F:1:1: No such file or directory"
