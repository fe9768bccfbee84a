"""``oscc-bridge check-config``: every problem of a configuration file, not only the first.

`bridge.config.load` stops at the first error, which is right for ``run``. An operator
fixing a file wants the whole list, and wants to hear about what ``run`` would only trip
over later::

    schema      each key on its own (wrong type, out of range, unknown key, missing)
    checks      config.problems (duplicate names, URL schemes, ca_file)
    URLs        a host, no spaces, a numeric port ("http://", "http://oscc:8443 bad")
    secrets     placeholders left in ("change-me", "<token>", ...)
    spool.dir   a directory the bridge can create and write
    tracing     the otel extra installed when tracing is on
    TLS files   readable PEM, key matching the certificate, not expired (`bridge.tls`);
                a certificate that expires soon is a warning, not an error

Each problem names its key; one whose value came from AMQP_URL or OSCC_URL says so.
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from bridge import config as cfg
from bridge import tls, tracing
from bridge.errors import ConfigError

# What people leave in a file they copied: the shipped manifests' "change-me" and friends.
PLACEHOLDER = re.compile(
    r"^(?:change[-_ ]?me.*|replace[-_ ]?me.*|changeit|secret|password|passw0rd|todo|"
    r"fixme|xxx+|\.\.\.|<[^>]*>|your[-_ ].*|example)$",
    re.IGNORECASE,
)
# Values check-config puts in place of bad or missing ones, so that it can go on.
_STAND_IN = {"name": "x", "title": "x", "token": "x"}
_OVERRIDES = {"broker.url": "AMQP_URL", "broker.urls": "AMQP_URL", "oscc.url": "OSCC_URL"}


@dataclass(slots=True)
class Report:
    """What check-config found: the configuration (when it loads) and every problem."""

    path: Path
    config: cfg.Config | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def diagnose(path: Path, env: Mapping[str, str] | None = None) -> Report:
    """Every problem of the configuration file at `path` (`env`: default os.environ)."""
    env = os.environ if env is None else env
    report = Report(path)
    try:
        raw = cfg.table(path.read_text(encoding="utf-8"), env)
    except OSError as exc:
        report.problems.append(f"cannot read {path}: {exc.strerror}")
        return report
    except ConfigError as exc:
        report.problems.append(str(exc))
        return report
    found = list(_schema(raw))
    cleaned = _cleaned(raw, {key for key, _ in found})
    config = msgspec.convert(cleaned, cfg.Config)
    found += [(e.key or "", str(e)) for e in cfg.problems(config)]
    found += list(_hosts(config)) + list(_placeholders(config)) + list(_spool(config))
    try:
        tracing.check(config.tracing)  # the otel extra is installed when tracing is on
    except ConfigError as exc:
        found.append((exc.key or "tracing.enabled", str(exc)))
    if config.http.reuse_port and not config.http.admin_port:
        report.warnings.append(
            "http.reuse_port: /metrics, /status and /readyz share the webhook port, so each "
            "request reaches whichever instance the kernel picks: give every instance an "
            "http.admin_port of its own"
        )
    for finding in tls.check_files(config.http):
        if finding.level == "error":
            found.append((finding.key, str(finding)))
        else:
            report.warnings.append(str(finding))
    report.problems = [_with_origin(key, text, env) for key, text in found]
    if not report.problems:
        report.config = cfg.parse(path.read_text(encoding="utf-8"), env)
    return report


def _with_origin(key: str, text: str, env: Mapping[str, str]) -> str:
    var = _OVERRIDES.get(re.sub(r"\[\d+\]$", "", key))
    return f"{text} (the value comes from {var})" if var and env.get(var) else text


def _error(raw: Any, cls: type[Any], prefix: str) -> tuple[str, str] | None:
    """(key, message) of `raw` as `cls`, with keys below `prefix`; None when it is fine."""
    try:
        cfg.convert(raw, cls)
    except ConfigError as exc:
        key = f"{prefix}.{exc.key}" if exc.key else prefix
        text = str(exc).removeprefix(f"{exc.key}: ") if exc.key else str(exc)
        return key, f"{key}: {text}"
    return None


def _schema(raw: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Each key checked on its own, so that one bad key does not hide the next."""
    sections = {f.encode_name: f.type for f in msgspec.structs.fields(cfg.Config)}
    for name, value in raw.items():
        if name not in sections:
            yield name, f"{name}: unknown section or key"
        elif name == "connectors":
            yield from _connectors(value)
        elif not isinstance(value, dict):
            yield name, f"{name}: must be a table ([{name}])"
        else:
            for key, item in value.items():
                found = _error({key: item}, sections[name], name)
                if found is not None:
                    yield found
    if "connectors" not in raw:
        yield "connectors", "connectors: at least one [[connectors]] is required"


def _connectors(value: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        yield "connectors", "connectors: at least one [[connectors]] is required"
        return
    for i, item in enumerate(value):
        where = f"connectors[{i}]"
        if not isinstance(item, dict):
            yield where, f"{where}: must be a table ([[connectors]])"
            continue
        for key in _STAND_IN:
            if key not in item:
                yield f"{where}.{key}", f"{where}.{key}: missing (required)"
        for key, v in item.items():
            found = _error({**_STAND_IN, key: v}, cfg.ConnectorConfig, where)
            if found is not None:
                yield found


def _cleaned(raw: dict[str, Any], bad: set[str]) -> dict[str, Any]:
    """`raw` without the keys reported bad (stand-ins for required ones), so the other
    checks can run on what is left."""
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name in bad or not isinstance(value, dict | list):
            continue
        if name == "connectors" and isinstance(value, list):
            out[name] = [
                _good(f"connectors[{i}]", {**_STAND_IN, **item}, bad, _STAND_IN)
                for i, item in enumerate(value)
                if isinstance(item, dict)
            ]
        elif isinstance(value, dict):
            out[name] = _good(name, value, bad, {})
    if not out.get("connectors"):
        out["connectors"] = [dict(_STAND_IN)]
    return out


def _good(
    where: str, table: dict[str, Any], bad: set[str], stand_in: dict[str, str]
) -> dict[str, Any]:
    """`table` without its bad keys; a required one gets its stand-in."""
    out = {k: v for k, v in table.items() if f"{where}.{k}" not in bad}
    return {**{k: v for k, v in stand_in.items() if k not in out}, **out}


def _hosts(config: cfg.Config) -> Iterator[tuple[str, str]]:
    for key, url, schemes in cfg.urls(config):
        if not url.startswith(schemes):
            continue  # config.problems said so
        why = _bad_host(url)
        if why is not None:
            yield key, f"{key}: {cfg.mask_url(url)!r} {why}"


def _bad_host(url: str) -> str | None:
    """Why `url` names no host to connect to (None when it does)."""
    if any(ch.isspace() for ch in url):
        return "contains a space"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if not parts.hostname:
        return "has no host"
    return None


def _placeholders(config: cfg.Config) -> Iterator[tuple[str, str]]:
    secrets: list[tuple[str, str]] = []
    for key, url, _ in cfg.urls(config):
        try:
            password = urllib.parse.urlsplit(url).password
        except ValueError:
            password = None
        if password:
            secrets.append((key, password))
    for i, c in enumerate(config.connectors):
        secrets += [(f"connectors[{i}].token", c.token)]
        if c.webhook_secret:
            secrets.append((f"connectors[{i}].webhook_secret", c.webhook_secret))
    for key, value in secrets:
        if PLACEHOLDER.match(value.strip()):
            yield key, f"{key}: a placeholder ({value[:12]!r}), not a real secret: set it"


def _spool(config: cfg.Config) -> Iterator[tuple[str, str]]:
    path = Path(config.spool.dir)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        yield "spool.dir", f"spool.dir: {str(existing)!r} is not a directory"
        return
    try:
        # writing is the only honest test: permissions, read-only mounts, root squash
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        where = "" if existing == path else f" (it would be created in {str(existing)!r})"
        yield "spool.dir", f"spool.dir: cannot write to {str(path)!r}{where}: {exc.strerror}"
