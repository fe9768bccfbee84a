"""``oscc-bridge check-config`` (bridge/configcheck.py): every problem at once, each naming
its key, including what `run` would only trip over later (a URL without a host, an
unwritable spool directory, a placeholder secret), and where an overriding value came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge import cli
from bridge.configcheck import diagnose

TOKEN = "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"


def good(spool: Path) -> str:
    return f"""
[broker]
url = "amqp://guest:guest@127.0.0.1:5672/"
exchange = "oscc-check"
[http]
public_url = "http://127.0.0.1:8080"
[oscc]
url = "https://oscc.example.com"
[spool]
dir = "{spool}"
[[connectors]]
name = "facebook"
title = "facebook"
token = "{TOKEN}"
"""


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return diagnose(path, env or {}).problems


def test_a_good_file_has_no_problem(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(good(tmp_path / "spool"))
    report = diagnose(path, {})
    assert report.problems == []
    assert report.config is not None
    assert not (tmp_path / "spool").exists()  # checked, not created


@pytest.mark.parametrize(("admin", "warned"), [("", True), ("admin_port = 9090\n", False)])
def test_reuse_port_without_an_admin_port_is_warned(
    tmp_path: Path, admin: str, warned: bool
) -> None:
    """Instances sharing the webhook port would share /metrics and /status too: a scrape
    would reach any one of them."""
    path = tmp_path / "bridge.toml"
    text = good(tmp_path / "spool").replace("[http]\n", f"[http]\nreuse_port = true\n{admin}")
    path.write_text(text)
    report = diagnose(path, {})
    assert report.problems == []
    assert any("http.reuse_port" in w and "admin_port" in w for w in report.warnings) == warned


@pytest.mark.parametrize(
    ("old", "new", "key", "says"),
    [
        ('url = "https://oscc.example.com"', 'url = "http://"', "oscc.url", "has no host"),
        (
            'url = "https://oscc.example.com"',
            'url = "http://oscc:8443 bad"',
            "oscc.url",
            "contains a space",
        ),
        (
            'public_url = "http://127.0.0.1:8080"',
            'public_url = "http://host:80x/"',
            "http.public_url",
            "not a URL",
        ),
        ("@127.0.0.1:5672/", "@/", "broker.url", "has no host"),
        (f'token = "{TOKEN}"', 'token = "change-me"', "connectors[0].token", "placeholder"),
        ("guest:guest@", "guest:CHANGE_ME@", "broker.url", "placeholder"),
        (
            f'token = "{TOKEN}"',
            f'token = "{TOKEN}"\nwebhook_secret = "<secret>"',
            "connectors[0].webhook_secret",
            "placeholder",
        ),
    ],
    ids=[
        "no-host",
        "space",
        "bad-port",
        "amqp-no-host",
        "token",
        "amqp-password",
        "webhook-secret",
    ],
)
def test_what_run_would_trip_over(tmp_path: Path, old: str, new: str, key: str, says: str) -> None:
    text = good(tmp_path / "spool")
    assert old in text
    (found,) = problems(tmp_path, text.replace(old, new))
    assert found.startswith(f"{key}: "), found
    assert says in found
    assert "guest:guest" not in found


def test_a_spool_dir_that_cannot_be_written(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    (found,) = problems(tmp_path, good(a_file / "spool"))
    assert found.startswith("spool.dir: ")
    assert "is not a directory" in found
    # a read-only place (root ignores permission bits; /proc refuses even root)
    (found,) = problems(tmp_path, good(Path("/proc/oscc-spool")))
    assert found.startswith("spool.dir: cannot write to '/proc/oscc-spool'")


def test_every_problem_not_only_the_first(tmp_path: Path) -> None:
    text = (
        good(tmp_path / "spool")
        .replace('exchange = "oscc-check"', 'exchange = "oscc-check"\nprefetch = "many"')
        .replace("[http]", '[http]\nport = 70000\ncolour = "blue"')
        .replace('url = "https://oscc.example.com"', 'url = "http://"')
        .replace(f'token = "{TOKEN}"', 'token = "change-me"')
        .replace('name = "facebook"', 'name = "Face Book"')
    )
    text += '[[connectors]]\nname = "email"\ntitle = "email"\n'
    found = problems(tmp_path, text)
    keys = [p.split(":", 1)[0] for p in found]
    assert sorted(keys) == sorted(
        [
            "broker.prefetch",
            "http.port",
            "http.colour",
            "oscc.url",
            "connectors[0].token",
            "connectors[0].name",
            "connectors[1].token",
        ]
    ), found


def test_says_when_a_value_came_from_the_environment(tmp_path: Path) -> None:
    text = good(tmp_path / "spool")
    (found,) = problems(tmp_path, text, {"OSCC_URL": "https://"})
    assert found.startswith("oscc.url: ")
    assert "(the value comes from OSCC_URL)" in found
    (found,) = problems(tmp_path, text, {"AMQP_URL": "amqp://u:p@h1/,amqp://u:p@/"})
    assert found.startswith("broker.urls[1]: ")
    assert "(the value comes from AMQP_URL)" in found
    # not from the environment: no such note
    (found,) = problems(tmp_path, text.replace("https://oscc.example.com", "https://"))
    assert "comes from" not in found


def test_cli_names_the_file_and_lists_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AMQP_URL", raising=False)
    monkeypatch.delenv("OSCC_URL", raising=False)
    path = tmp_path / "bridge.toml"
    path.write_text(
        good(tmp_path / "spool")
        .replace('url = "https://oscc.example.com"', 'url = "http://"')
        .replace(f'token = "{TOKEN}"', 'token = "change-me"')
    )
    assert cli.main(["check-config", "--config", str(path)]) == 3
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines[0] == f"configuration error: {path}: 2 problem(s)"
    assert any("oscc.url" in x for x in lines[1:])
    assert any("connectors[0].token" in x for x in lines[1:])
    assert "OK" not in out


def test_cli_ok_says_which_values_came_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OSCC_URL", "https://oscc.other.example")
    monkeypatch.delenv("AMQP_URL", raising=False)
    path = tmp_path / "bridge.toml"
    path.write_text(good(tmp_path / "spool"))
    assert cli.main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(oscc.url comes from OSCC_URL)" in out
    assert "https://oscc.other.example" in out
