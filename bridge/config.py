"""Configuration: one TOML file as a frozen msgspec Struct tree (DESIGN.md § Configuration).

``${VAR}`` is expanded from the environment before parsing; ``AMQP_URL`` and ``OSCC_URL``
override ``broker.url`` and ``oscc.url``. Every failure is a ConfigError naming the key.
Secrets (connector tokens, passwords in URLs) are masked in every repr.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from bridge.errors import ConfigError

DEFAULT_PATH = Path("config/bridge.toml")
_S = TypeVar("_S")

ConnectorName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_-]{1,64}$")]
Credential = Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


def mask_url(url: str) -> str:
    """``amqp://user:secret@host/`` -> ``amqp://user:***@host/``."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class BrokerConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # the nodes of one RabbitMQ cluster, tried in turn; when set, `url` is not used
    urls: list[str] = []
    exchange: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "oscc"
    queue_type: Literal["quorum", "classic"] = "quorum"
    prefetch: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 64
    confirm_timeout: Seconds = 5.0  # after this, a webhook payload goes to the spool
    # a larger contact or stream response is dead-lettered unread
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1_048_576

    @property
    def all_urls(self) -> list[str]:
        """Every broker URL, in the order reconnects try them."""
        return list(self.urls) or [self.url]

    def __repr__(self) -> str:
        return (
            f"BrokerConfig(urls={[mask_url(u) for u in self.all_urls]!r}, "
            f"exchange={self.exchange!r}, queue_type={self.queue_type!r}, "
            f"prefetch={self.prefetch!r}, confirm_timeout={self.confirm_timeout!r}, "
            f"max_message_bytes={self.max_message_bytes!r})"
        )


class HttpConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "0.0.0.0"
    port: Port = 8080
    public_url: str = "http://127.0.0.1:8080"
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1_048_576
    # /metrics, /status, /healthz, /readyz on a separate listener when set (0 = same one)
    admin_host: str = ""
    admin_port: Port = 0
    read_timeout: Seconds = 10.0  # header and body read timeout for webhook requests
    # webhook requests processed at once; beyond it: 503, errorCode 7, Retry-After
    max_concurrency: Annotated[int, msgspec.Meta(ge=1)] = 256
    tls_cert: str = ""  # PEM; with tls_key the webhook listener speaks HTTPS
    tls_key: str = ""
    tls_client_ca: str = ""  # PEM CA bundle: require OSCC's client certificate
    # SO_REUSEPORT on the webhook listener: several instances on one host share `port`
    reuse_port: bool = False


class OsccConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = "https://oscc.example.com"
    verify_tls: bool = True
    ca_file: str = ""
    keepalive_interval: Seconds = 30.0
    request_timeout: Seconds = 10.0
    listen_for_events_path: str = "/openmedia/webapi/main/listenForEvents"
    # transient failures of one contact while OSCC accepts others, then dead-lettered
    max_attempts: Annotated[int, msgspec.Meta(ge=1)] = 10
    # keepalives failed in a row before a registered connector is `degraded`
    degraded_after: Annotated[int, msgspec.Meta(ge=1)] = 3


class SpoolConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    dir: str = "var/spool"
    max_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1_073_741_824


class HaConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    instance: str = ""  # default <hostname>-<pid>
    fence_after: Seconds = 10.0  # seconds without the broker before an owner lets go


class TracingConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False
    endpoint: str = ""  # OTLP; empty: the OTEL_EXPORTER_OTLP_* variables
    sample_ratio: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 1.0


class LogConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class ConnectorConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: ConnectorName
    title: Credential
    token: Credential
    webhook_secret: str = ""
    listen_for_events: bool = True
    publish_credentials: bool = False

    def __repr__(self) -> str:
        return (
            f"ConnectorConfig(name={self.name!r}, title={self.title!r}, token='***', "
            f"webhook_secret={'***' if self.webhook_secret else ''!r}, "
            f"listen_for_events={self.listen_for_events!r}, "
            f"publish_credentials={self.publish_credentials!r})"
        )


class Config(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole configuration."""

    broker: BrokerConfig = BrokerConfig()
    http: HttpConfig = HttpConfig()
    oscc: OsccConfig = OsccConfig()
    spool: SpoolConfig = SpoolConfig()
    ha: HaConfig = HaConfig()
    tracing: TracingConfig = TracingConfig()
    log: LogConfig = LogConfig()
    connectors: Annotated[list[ConnectorConfig], msgspec.Meta(min_length=1)]

    def connector(self, name: str) -> ConnectorConfig:
        """The connector called `name`; KeyError when there is none."""
        for c in self.connectors:
            if c.name == name:
                return c
        raise KeyError(name)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# TOML tokens that matter to expansion, in the order they must be tried: comments are left
# alone (a commented-out "${OLD}" must not require OLD), values inserted into basic strings
# are escaped (a '"' or '\' in a password must not end or alter the string).
_TOKEN = re.compile(
    r'(?P<mlbasic>"""[\s\S]*?"""(?!"))|(?P<mlliteral>\'\'\'[\s\S]*?\'\'\'(?!\'))'
    r'|(?P<basic>"(?:[^"\\\n]|\\.)*")|(?P<literal>\'[^\'\n]*\')|(?P<comment>#[^\n]*)'
    r"|(?P<var>" + _VAR.pattern + ")"
)


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset VAR without default is an error.

    Comments are not expanded; inside a basic ("...") string the value is escaped.
    """

    def value(m: re.Match[str], offset: int, escape: bool) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            found = env[name]
        elif default is not None:
            found = default
        else:
            line = text.count("\n", 0, offset + m.start()) + 1
            raise ConfigError(f"line {line}: environment variable {name} is not set", key=name)
        # JSON string escapes are a subset of TOML's basic-string escapes.
        return json.dumps(found, ensure_ascii=False)[1:-1] if escape else found

    def token(t: re.Match[str]) -> str:
        if t.group("comment") is not None:
            return t.group()
        if t.group("var") is not None:
            m = _VAR.match(t.group())
            assert m is not None  # the token is exactly one _VAR match
            return value(m, t.start(), escape=False)
        escape = t.group("basic") is not None or t.group("mlbasic") is not None
        return _VAR.sub(lambda m: value(m, t.start(), escape), t.group())

    return _TOKEN.sub(token, text)


_KEY_PATH = re.compile(r"at `\$((?:\.[A-Za-z_0-9]+|\[\d+\])*)`")


def _key_of(message: str) -> str | None:
    m = _KEY_PATH.search(message)
    # msgspec names no path for the top level: "unknown field `x`" alone
    key = m.group(1).lstrip(".") if m else ""
    missing = re.search(r"missing required field `(\w+)`", message)
    if missing:
        key = f"{key}.{missing.group(1)}" if key else missing.group(1)
    unknown = re.search(r"unknown field `(\w+)`", message)
    if unknown:
        key = f"{key}.{unknown.group(1)}" if key else unknown.group(1)
    return key or None


def table(text: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The TOML table of `text`, ``${VAR}`` expanded and AMQP_URL/OSCC_URL applied."""
    try:
        raw = msgspec.toml.decode(expand(text, env).encode())
    except msgspec.DecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a TOML table")
    if env.get("AMQP_URL"):
        # a comma-separated list names the nodes of one cluster
        urls = [u.strip() for u in env["AMQP_URL"].split(",") if u.strip()]
        raw.setdefault("broker", {}).update(url=urls[0], urls=urls if len(urls) > 1 else [])
    if env.get("OSCC_URL"):
        raw.setdefault("oscc", {})["url"] = env["OSCC_URL"]
    return raw


def convert(raw: Any, cls: type[_S]) -> _S:
    """`raw` as `cls`; ConfigError naming the key (relative to `raw`)."""
    try:
        return msgspec.convert(raw, cls)
    except msgspec.ValidationError as exc:
        key = _key_of(str(exc))
        where = f"{key}: " if key else ""
        raise ConfigError(f"{where}{exc}", key=key) from exc


def parse(text: str, env: Mapping[str, str] | None = None) -> Config:
    """Parse TOML text into a Config; ConfigError names the bad key."""
    env = os.environ if env is None else env
    config = convert(table(text, env), Config)
    _check(config)
    return config


def _check(config: Config) -> None:
    for problem in problems(config):
        raise problem


def urls(config: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    """(key, URL, allowed schemes) of every URL in `config`."""
    return [
        ("broker.url", config.broker.url, ("amqp://", "amqps://")),
        *(
            (f"broker.urls[{i}]", url, ("amqp://", "amqps://"))
            for i, url in enumerate(config.broker.urls)
        ),
        ("oscc.url", config.oscc.url, ("http://", "https://")),
        ("http.public_url", config.http.public_url, ("http://", "https://")),
    ]


def problems(config: Config) -> Iterator[ConfigError]:
    """What msgspec cannot check: unique names, URL schemes, files."""
    names = [c.name for c in config.connectors]
    for i, name in enumerate(names):
        if name in names[:i]:
            yield ConfigError(
                f"connectors[{i}].name: {name!r} appears twice", key=f"connectors[{i}].name"
            )
    for key, url, schemes in urls(config):
        if not url.startswith(schemes):
            yield ConfigError(
                f"{key}: {mask_url(url)!r} must start with {' or '.join(schemes)}", key=key
            )
    yield from _tls_problems(config.http)
    if config.oscc.ca_file and not Path(config.oscc.ca_file).is_file():
        yield ConfigError(
            f"oscc.ca_file: {config.oscc.ca_file!r} is not a file", key="oscc.ca_file"
        )


def _tls_problems(http: HttpConfig) -> Iterator[ConfigError]:
    """The TLS keys go together; what the files hold is checked by ``check-config``."""
    if bool(http.tls_cert) != bool(http.tls_key):
        key, other = ("http.tls_key", "http.tls_cert")
        if not http.tls_cert:
            key, other = other, key
        yield ConfigError(f"{key}: must be set together with {other}", key=key)
    if http.tls_client_ca and not http.tls_cert:
        yield ConfigError(
            "http.tls_client_ca: needs http.tls_cert and http.tls_key (mutual TLS is TLS)",
            key="http.tls_client_ca",
        )
    if http.tls_cert and not http.public_url.startswith("https://"):
        yield ConfigError(
            f"http.public_url: {http.public_url!r} must start with https:// when "
            "http.tls_cert is set (OSCC calls the listener over TLS)",
            key="http.public_url",
        )


def load(
    path: str | os.PathLike[str] = DEFAULT_PATH, env: Mapping[str, str] | None = None
) -> Config:
    """Read and parse the file at `path`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    return parse(text, env)


def webhook_url(config: Config, connector: ConnectorConfig) -> str:
    """The webhookURL registered for `connector` (DESIGN.md § Webhook HTTP interface)."""
    url = f"{config.http.public_url.rstrip('/')}/webhook/{connector.name}"
    return f"{url}/{connector.webhook_secret}" if connector.webhook_secret else url
