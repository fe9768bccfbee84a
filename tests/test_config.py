"""Configuration: the shipped files parse, expansion and overrides work, every kind of bad
configuration is a ConfigError naming the exact key, and secrets stay out of repr/str."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge import config
from bridge.config import Config, ConfigError, expand, load, parse, webhook_url

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "bridge.example.toml"
DEMO = ROOT / "config" / "demo.toml"
EXAMPLE_ENV = {"OSCC_FACEBOOK_TOKEN": "fb-token-1", "OSCC_EMAIL_TOKEN": "mail-token-2"}

MINIMAL = """
[[connectors]]
name = "facebook"
title = "facebook"
token = "tok"
"""


def with_connector(head: str = "", connector: str = "") -> str:
    """MINIMAL with `head` before it and `connector` lines added to its connector."""
    return head + MINIMAL + connector


def key_of(text: str, env: dict[str, str] | None = None) -> str | None:
    with pytest.raises(ConfigError) as info:
        parse(text, env or {})
    return info.value.key


# -- the shipped files ----------------------------------------------------------------------


def test_example_parses_with_its_env_vars() -> None:
    cfg = load(EXAMPLE, EXAMPLE_ENV)
    assert [(c.name, c.title, c.token) for c in cfg.connectors] == [
        ("facebook", "facebook", "fb-token-1"),
        ("email", "email", "mail-token-2"),
    ]


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path: Path) -> None:
    assert load(path, EXAMPLE_ENV).connectors


def test_example_needs_its_token_vars() -> None:
    with pytest.raises(ConfigError) as info:
        load(EXAMPLE, {"OSCC_FACEBOOK_TOKEN": "x"})
    assert info.value.key == "OSCC_EMAIL_TOKEN"


def test_example_states_every_default() -> None:
    """The example writes each key with its default value, so it documents the defaults."""
    cfg = load(EXAMPLE, EXAMPLE_ENV)
    defaults = parse(MINIMAL, {})
    for section in ("broker", "http", "oscc", "spool", "ha", "tracing", "log"):
        assert getattr(cfg, section) == getattr(defaults, section), section


def _struct_keys(cls: type) -> set[str]:
    return set(cls.__struct_fields__)  # type: ignore[attr-defined]


def test_example_names_and_explains_every_key() -> None:
    """Every field of every section is in the example, each under a comment."""
    sections: dict[str, type] = {
        "broker": config.BrokerConfig,
        "http": config.HttpConfig,
        "oscc": config.OsccConfig,
        "spool": config.SpoolConfig,
        "ha": config.HaConfig,
        "tracing": config.TracingConfig,
        "log": config.LogConfig,
        "connectors": config.ConnectorConfig,
    }
    assert set(sections) == _struct_keys(Config)
    lines = EXAMPLE.read_text().splitlines()
    seen: dict[str, set[str]] = {s: set() for s in sections}
    current, first_of_section = "", False
    for i, line in enumerate(lines):
        if line.startswith("["):
            current = line.strip("[]")
            first_of_section = not seen[current]
            continue
        if not line or line.startswith("#"):
            continue
        key = line.split("=", 1)[0].strip()
        if first_of_section and not lines[i - 1].startswith("#"):
            # a key may share the comment of the keys right above it if it names them
            above = i - 1
            while lines[above] and not lines[above].startswith(("#", "[")):
                above -= 1
            comment = []
            while lines[above].startswith("#"):
                comment.append(lines[above])
                above -= 1
            assert key in "".join(comment), f"{current}.{key} has no comment"
        seen[current].add(key)
    for section, cls in sections.items():
        assert seen[section] == _struct_keys(cls), section


def test_demo_config_is_what_the_demo_needs() -> None:
    cfg = load(DEMO, {})
    assert cfg.broker.url == "amqp://guest:guest@127.0.0.1:5672/"
    assert cfg.broker.queue_type == "quorum"
    assert cfg.oscc.url == "http://127.0.0.1:8443"
    assert cfg.oscc.keepalive_interval == 5
    assert cfg.http.port == 8080
    assert cfg.http.public_url == "http://127.0.0.1:8080"
    assert cfg.spool.dir == "var/demo/spool"
    [c] = cfg.connectors
    assert (c.name, c.title, c.token) == ("facebook", "facebook", "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX")
    assert webhook_url(cfg, c) == "http://127.0.0.1:8080/webhook/facebook"


def test_demo_token_is_the_guides_example() -> None:
    guide = ROOT.parent / "shared" / "spec" / "openmedia-programming-guide.txt"
    if not guide.exists():
        guide = Path("/work/shared/spec/openmedia-programming-guide.txt")
    if not guide.exists():
        pytest.skip("the programming guide is not beside the work tree")
    assert '"token": "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"' in guide.read_text()


# -- ${VAR} expansion -----------------------------------------------------------------------


def test_var_is_expanded() -> None:
    cfg = parse(MINIMAL.replace('"tok"', '"${TOK}"'), {"TOK": "from-env"})
    assert cfg.connectors[0].token == "from-env"


def test_var_default_is_used_when_unset() -> None:
    cfg = parse(MINIMAL.replace('"tok"', '"${TOK:-fallback}"'), {})
    assert cfg.connectors[0].token == "fallback"


def test_var_default_is_ignored_when_set() -> None:
    cfg = parse(MINIMAL.replace('"tok"', '"${TOK:-fallback}"'), {"TOK": "set"})
    assert cfg.connectors[0].token == "set"


def test_var_outside_a_string_can_be_a_number() -> None:
    cfg = parse(with_connector("[broker]\nprefetch = ${PREFETCH}\n"), {"PREFETCH": "7"})
    assert cfg.broker.prefetch == 7


def test_var_part_of_a_string() -> None:
    head = '[broker]\nurl = "amqp://${U}:${P}@${H:-rabbit}:5672/"\n'
    cfg = parse(with_connector(head), {"U": "bridge", "P": "pw"})
    assert cfg.broker.url == "amqp://bridge:pw@rabbit:5672/"


def test_unset_var_names_the_variable() -> None:
    assert key_of(MINIMAL.replace('"tok"', '"${NOT_SET_ANYWHERE}"')) == "NOT_SET_ANYWHERE"


def test_unset_var_message_gives_the_line() -> None:
    with pytest.raises(ConfigError, match="line 5: environment variable NOPE is not set"):
        parse(MINIMAL.replace('"tok"', '"${NOPE}"'), {})


def test_var_in_a_comment_is_not_expanded() -> None:
    text = '# token = "${OLD_TOKEN}"\n' + MINIMAL + "# and ${ANOTHER} here\n"
    assert parse(text, {}).connectors[0].token == "tok"
    assert expand(text, {}) == text


def test_value_with_quote_and_backslash_stays_inside_its_string() -> None:
    """A password with '"' or '\\' must neither end the TOML string nor become an escape."""
    secret = 'p"a\\ss#${X}'
    head = '[broker]\nurl = "amqp://u:${PW}@h/"\n'
    cfg = parse(with_connector(head), {"PW": secret})
    assert cfg.broker.url == f"amqp://u:{secret}@h/"


def test_dollar_without_braces_is_literal() -> None:
    cfg = parse(MINIMAL.replace('"tok"', '"a$b$"'), {})
    assert cfg.connectors[0].token == "a$b$"


# -- environment overrides ------------------------------------------------------------------


def test_amqp_url_overrides_broker_url() -> None:
    head = '[broker]\nurl = "amqp://file@h/"\n'
    cfg = parse(with_connector(head), {"AMQP_URL": "amqps://env:pw@rabbit:5671/vh"})
    assert cfg.broker.url == "amqps://env:pw@rabbit:5671/vh"


def test_oscc_url_overrides_even_without_the_section() -> None:
    cfg = parse(MINIMAL, {"OSCC_URL": "http://sim:8443"})
    assert cfg.oscc.url == "http://sim:8443"


def test_empty_override_is_ignored() -> None:
    cfg = parse(MINIMAL, {"AMQP_URL": "", "OSCC_URL": ""})
    assert cfg.broker.url == config.BrokerConfig().url
    assert cfg.oscc.url == config.OsccConfig().url


def test_bad_override_names_the_key_it_overrides() -> None:
    assert key_of(MINIMAL, {"OSCC_URL": "ftp://x"}) == "oscc.url"


# -- bad configurations: ConfigError names the exact key ------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param(with_connector('[broker]\nprefetch = "x"\n'), "broker.prefetch", id="type"),
        pytest.param(with_connector("[http]\nport = 70000\n"), "http.port", id="range"),
        pytest.param(with_connector("[broker]\nprefetch = 0\n"), "broker.prefetch", id="ge1"),
        pytest.param(with_connector("[log]\nlevel = 'loud'\n"), "log.level", id="enum"),
        pytest.param(
            with_connector("[broker]\nqueue_type = 'lazy'\n"), "broker.queue_type", id="qt"
        ),
        pytest.param(
            with_connector("[oscc]\nkeepalive_interval = 0\n"), "oscc.keepalive_interval", id="gt0"
        ),
        pytest.param(with_connector("[oscc]\nverify_tls = 'no'\n"), "oscc.verify_tls", id="bool"),
        pytest.param(with_connector("broker = 1\n"), "broker", id="section-type"),
        pytest.param(with_connector("bogus = 1\n"), "bogus", id="unknown-top-level"),
        pytest.param(with_connector("[htp]\nport = 1\n"), "htp", id="unknown-section"),
        pytest.param(with_connector("[http]\nprot = 1\n"), "http.prot", id="unknown-nested"),
        pytest.param(with_connector(connector="tokn = 'x'\n"), "connectors[0].tokn", id="unk-conn"),
        pytest.param('[[connectors]]\nname = "a"\ntitle = "b"\n', "connectors[0].token", id="tok"),
        pytest.param(MINIMAL.replace('"tok"', '""'), "connectors[0].token", id="empty-token"),
        pytest.param(
            MINIMAL.replace('"tok"', '"' + "x" * 51 + '"'), "connectors[0].token", id="51"
        ),
        pytest.param(
            MINIMAL.replace('title = "facebook"', 'title = "' + "t" * 51 + '"'),
            "connectors[0].title",
            id="title-51",
        ),
        pytest.param(
            MINIMAL.replace('name = "facebook"', 'name = "Face Book"'), "connectors[0].name"
        ),
        pytest.param(MINIMAL.replace('name = "facebook"', 'name = "a.b"'), "connectors[0].name"),
        pytest.param(MINIMAL + MINIMAL, "connectors[1].name", id="duplicate-name"),
        pytest.param("[broker]\n", "connectors", id="no-connectors"),
        pytest.param("connectors = []\n", "connectors", id="empty-connectors"),
        pytest.param(with_connector("[oscc]\nurl = 'ftp://x'\n"), "oscc.url", id="oscc-scheme"),
        pytest.param(
            with_connector("[broker]\nurl = 'http://h/'\n"), "broker.url", id="amqp-scheme"
        ),
        pytest.param(
            with_connector("[http]\npublic_url = 'bridge:8080'\n"), "http.public_url", id="public"
        ),
        pytest.param(
            with_connector("[oscc]\nca_file = '/nonexistent/ca.pem'\n"), "oscc.ca_file", id="ca"
        ),
    ],
)
def test_bad_config_names_the_key(text: str, key: str) -> None:
    assert key_of(text) == key


def test_second_connector_is_named_by_index() -> None:
    second = MINIMAL.replace("facebook", "email").replace('"tok"', '"' + "x" * 51 + '"')
    assert key_of(MINIMAL + second) == "connectors[1].token"


def test_ca_file_that_exists_is_accepted(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = parse(with_connector(f"[oscc]\nca_file = '{ca}'\n"), {})
    assert cfg.oscc.ca_file == str(ca)


def test_not_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse("[[[", {})


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml", {})


def test_config_error_is_fatal_with_its_key_in_the_message() -> None:
    with pytest.raises(ConfigError, match=r"^http\.prot: "):
        parse(with_connector("[http]\nprot = 1\n"), {})


# -- secrets --------------------------------------------------------------------------------

SECRETS = {"token": "S3cr3tT0k3n", "password": "Pa55w0rdX", "hook": "H00kS3cr3t"}


def secret_config() -> Config:
    head = f'[broker]\nurl = "amqp://bridge:{SECRETS["password"]}@rabbit:5672/"\n'
    connector = f'webhook_secret = "{SECRETS["hook"]}"\n'
    return parse(with_connector(head, connector).replace('"tok"', f'"{SECRETS["token"]}"'), {})


@pytest.mark.parametrize("render", [repr, str], ids=["repr", "str"])
def test_secrets_never_in_repr_or_str(render: object) -> None:
    cfg = secret_config()
    assert cfg.connectors[0].token == SECRETS["token"]  # the value is there, just not shown
    assert callable(render)
    for obj in (cfg, cfg.broker, cfg.connectors[0], cfg.connectors):
        text = render(obj)
        for value in SECRETS.values():
            assert value not in text, (value, text)
    assert "amqp://bridge:***@rabbit:5672/" in render(cfg)


def test_secret_not_in_the_message_of_a_bad_url() -> None:
    with pytest.raises(ConfigError) as info:
        parse(with_connector(f'[broker]\nurl = "http://u:{SECRETS["password"]}@h/"\n'), {})
    assert info.value.key == "broker.url"
    assert SECRETS["password"] not in str(info.value)


def test_secret_not_in_the_message_of_an_overlong_token() -> None:
    token = "Z" * 51
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL.replace('"tok"', f'"{token}"'), {})
    assert token not in str(info.value)


def test_mask_url() -> None:
    assert config.mask_url("amqp://u:p%40ss@h:5672/v") == "amqp://u:***@h:5672/v"
    assert config.mask_url("amqp://h:5672/") == "amqp://h:5672/"


def test_amqp_url_with_commas_names_the_nodes_of_a_cluster() -> None:
    env = {"AMQP_URL": "amqp://u:p@node1:5672/, amqp://u:p@node2:5672/"}
    cfg = parse(MINIMAL, env)
    assert cfg.broker.all_urls == ["amqp://u:p@node1:5672/", "amqp://u:p@node2:5672/"]
    assert "p@" not in repr(cfg.broker)


def test_a_bad_url_in_broker_urls_is_named() -> None:
    text = MINIMAL.replace(
        "[[connectors]]", '[broker]\nurls = ["amqp://a/", "http://b/"]\n\n[[connectors]]'
    )
    with pytest.raises(ConfigError) as info:
        parse(text, {})
    assert info.value.key == "broker.urls[1]"
