"""The YAML configuration file (``gqm.yaml``): typed sections, all problems at once.

::

    cfg = gqm.config.load_config_file("gqm.yaml")     # or load_config(text)
    opts = gqm.config.server_options(cfg)             # what gqm.Server needs

The schema is the original's ``gqm.yaml`` (sections ``redis``, ``app``, ``queues``,
``pools``, ``scheduler`` with ``cron_entries``, ``monitoring`` with ``auth``, ``api`` and
``dashboard``) plus what the port adds: ``redis.url`` / ``username`` / ``tls_*_file`` /
``socket_timeout``, ``app.lease_ttl`` / ``max_recoveries``, ``pools[].prefetch``,
``scheduler.misfire_grace``, ``monitoring.api.trusted_proxies`` and ``monitoring.api.tls``.
:data:`TEMPLATE` (what ``gqm init`` writes) shows every key with its default. Durations
are numbers of seconds.

**Every problem of a file is reported in one run.** Loading raises :class:`ConfigError`,
whose ``problems`` each name the path (``$.pools[1].concurrency``), the line, the value
and what is allowed::

    invalid configuration in gqm.yaml: 2 problems
    gqm.yaml:14: $.pools[1].concurrency: -2 is not allowed: must be >= 0 (0 means ...)
    gqm.yaml:21: $.pools[1].concurency: "concurency" is not allowed: unknown key (did ...

Unknown keys and duplicate keys are errors, so a typo cannot pass unnoticed. An empty
value (``password:``) means the key's default, as in the original.

**Environment variables.** In any string value, ``${NAME}`` is replaced by the variable
(an unset variable is a problem naming the path and the variable), ``${NAME:-default}``
falls back to ``default`` when the variable is unset or empty, and ``$${`` is a literal
``${``. References are expanded after YAML parsing, so YAML quoting rules are unaffected.
A field that is not a string reads the expanded text as a YAML scalar, so
``db: ${REDIS_DB:-0}`` gives an integer.

**Differences from the original**, besides the added keys:

* ``password_hash`` must be an argon2id hash (``$argon2id$...``, from
  ``gqm hash-password``); bcrypt hashes (``$2a$``, ``$2b$``, ``$2y$``) are rejected with
  a message that says how to re-hash.
* ``redis.prefix`` is the bare prefix (``gqm``; keys look like ``gqm:{queue}:ready``). A
  trailing colon (``gqm:``) is accepted and removed, so files written for either form of
  the original's template load the same way.
* The default role of users and API keys is ``viewer`` (least privilege).
* ``api.rate_limit`` must be > 0: the original's ``0`` (default) and ``-1`` (off) are
  refused; omit the key for the default of 100 requests per second per client IP.
* ``pools[].grace_period`` and ``pools[].shutdown_timeout`` are accepted so that the
  original's files load, and have no effect: leases replace the per-pool grace period
  (the reaper's slack in the original), and ``app.grace_period`` governs shutdown (the
  original ignored the per-pool ``shutdown_timeout`` too). ``app.shutdown_timeout`` is
  validated and kept, but :class:`gqm.Server` has no counterpart: its shutdown takes
  ``grace_period`` plus a bounded hand-back of the jobs still running.
* ``cron_entries[].timeout`` and ``max_retry`` are accepted only as 0 (unset): a cron job
  takes its timeout and retries from its handler or pool.
* Placeholders are resolved in the loaded config: ``app.global_job_timeout: 0`` becomes
  1800 (the global timeout cannot be disabled), ``scheduler.poll_interval: 0`` becomes 5,
  ``auth.session_ttl: 0`` becomes 86400, ``dashboard.enabled`` turns ``api.enabled`` on,
  and a cron entry without a ``timezone`` gets ``app.timezone``.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import math
import os
import re
import ssl
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias, Union, get_args, get_origin
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import yaml

from ._cron_runtime import CronEntry, OverlapPolicy
from ._job import json_encoder
from ._keys import QUEUE_NAME_RE
from ._pool import DequeueStrategy, PoolConfig
from ._task import check_job_type
from .cron import CronSchedule
from .errors import ConfigurationError
from .retry import DEFAULT_BACKOFF_MAX, DEFAULT_MAX_RETRY, DEFAULT_RETRY_DELAY, Backoff, RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "DEFAULT_GLOBAL_JOB_TIMEOUT",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_SESSION_TTL",
    "MIN_API_KEY_LENGTH",
    "TEMPLATE",
    "ApiConfig",
    "ApiKeyConfig",
    "ApiTlsConfig",
    "AppConfig",
    "AuthConfig",
    "ConfigError",
    "CronEntryConfig",
    "DashboardConfig",
    "GqmConfig",
    "MonitoringConfig",
    "PoolConfigFile",
    "Problem",
    "QueueConfig",
    "RedisConfig",
    "RetryConfig",
    "SchedulerConfig",
    "ServerOptions",
    "UserConfig",
    "load_config",
    "load_config_file",
    "server_options",
]

_DAY: Final = 86400.0
#: ``app.global_job_timeout: 0`` means this (the global timeout cannot be disabled).
DEFAULT_GLOBAL_JOB_TIMEOUT: Final = 1800.0
#: ``scheduler.poll_interval: 0`` means this.
DEFAULT_POLL_INTERVAL: Final = 5.0
#: ``monitoring.auth.session_ttl: 0`` means this.
DEFAULT_SESSION_TTL: Final = _DAY
#: The shortest API key accepted.
MIN_API_KEY_LENGTH: Final = 32

_LOG_LEVELS: Final = ("debug", "info", "warn", "error")
_ROLES: Final = ("admin", "viewer")
_STRATEGIES: Final = tuple(str(s) for s in DequeueStrategy)
_BACKOFFS: Final = tuple(str(b) for b in Backoff)
_OVERLAPS: Final = tuple(str(o) for o in OverlapPolicy)
_ARGON2ID: Final = re.compile(
    r"\$argon2id\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
)
_BCRYPT_PREFIXES: Final = ("$2a$", "$2b$", "$2y$", "$2x$", "$2$")


# -- the schema ----------------------------------------------------------------------------


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Base of every section: unknown keys are errors, fields are keywords, values frozen."""


class RedisConfig(_Section, frozen=True):
    """``redis:`` -- where Redis is and how gqm's keys are named.

    ``url`` (``redis://``, ``rediss://`` or ``unix://``) wins over ``addr``; ``username``,
    ``password`` and ``db`` are merged into it (giving one in both places is an error).
    ``tls: true`` connects with TLS (system CA pool, or ``tls_ca_file``); a client
    certificate takes ``tls_cert_file`` and ``tls_key_file`` together. ``pool_size`` 0
    means the driver's default.
    """

    addr: str = "localhost:6379"
    url: str | None = None
    username: str = ""
    password: str = ""
    db: int = 0
    prefix: str = "gqm"
    pool_size: int = 0
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    socket_timeout: float = 10.0


class AppConfig(_Section, frozen=True):
    """``app:`` -- server-wide settings.

    ``timezone`` is the default of cron entries. ``shutdown_timeout`` is kept for the
    original's files and not used by :class:`gqm.Server` (see ``grace_period``).
    ``global_job_timeout`` applies to jobs that set no timeout (0 means the default,
    1800: it cannot be disabled).
    ``grace_period`` is how long running jobs get to finish at shutdown.
    ``result_ttl`` / ``failure_ttl`` keep completed / dead-letter jobs (-1 for ever, 0
    not at all). A crashed worker's jobs run again after about ``lease_ttl``; a job
    recovered more than ``max_recoveries`` times goes to the dead-letter queue.
    """

    timezone: str = "UTC"
    log_level: str = "info"
    shutdown_timeout: float = 30.0
    global_job_timeout: float = DEFAULT_GLOBAL_JOB_TIMEOUT
    grace_period: float = 10.0
    result_ttl: float = 7 * _DAY
    failure_ttl: float = 30 * _DAY
    lease_ttl: float = 30.0
    max_recoveries: int = 3


class QueueConfig(_Section, frozen=True):
    """One entry of ``queues:``; ``default`` exists without being declared.

    ``priority`` is kept as metadata, as in the original: a pool reads its queues in the
    order its ``queues`` list gives.
    """

    name: str = ""
    priority: int = 0


class RetryConfig(_Section, frozen=True):
    """``pools[].retry:`` -- becomes a :class:`gqm.RetryPolicy`."""

    max_retry: int = DEFAULT_MAX_RETRY
    backoff: str = "fixed"
    backoff_base: float = DEFAULT_RETRY_DELAY
    backoff_max: float = DEFAULT_BACKOFF_MAX
    intervals: list[float] = []


class PoolConfigFile(_Section, frozen=True):
    """One entry of ``pools:`` -- becomes a :class:`gqm.PoolConfig`.

    ``job_types: ["*"]`` takes every job type no other pool takes. ``queues`` are read
    highest priority first. ``concurrency`` 0 means the number of CPUs; ``job_timeout``
    0 means ``app.global_job_timeout``. ``grace_period`` and ``shutdown_timeout`` are
    accepted for the original's files and have no effect.
    """

    name: str = ""
    job_types: list[str] = []
    queues: list[str] = msgspec.field(default_factory=lambda: ["default"])
    concurrency: int = 0
    job_timeout: float = 0.0
    dequeue_strategy: str = "weighted"
    retry: RetryConfig | None = None
    prefetch: int | None = None
    grace_period: float = 0.0
    shutdown_timeout: float = 0.0


class CronEntryConfig(_Section, frozen=True):
    """One entry of ``scheduler.cron_entries:`` -- becomes a :class:`gqm.CronEntry`.

    ``payload`` is any YAML value, or (as in the original) a string of JSON text.
    ``timezone`` defaults to ``app.timezone``. ``timeout`` and ``max_retry`` exist for the
    original's files and must be 0.
    """

    id: str = ""
    name: str = ""
    cron_expr: str = ""
    timezone: str = ""
    job_type: str = ""
    queue: str = "default"
    payload: Any = None
    overlap_policy: str = "skip"
    enabled: bool = True
    timeout: float = 0.0
    max_retry: int = 0


class SchedulerConfig(_Section, frozen=True):
    """``scheduler:`` -- delayed-job promotion and cron (``enabled: false`` for a
    worker-only server). A cron tick later than ``misfire_grace`` is skipped."""

    enabled: bool = True
    poll_interval: float = DEFAULT_POLL_INTERVAL
    misfire_grace: float = 60.0
    cron_entries: list[CronEntryConfig] = []


class UserConfig(_Section, frozen=True):
    """One entry of ``monitoring.auth.users:`` (``password_hash`` from ``gqm hash-password``)."""

    username: str = ""
    password_hash: str = ""
    role: str = "viewer"


class AuthConfig(_Section, frozen=True):
    """``monitoring.auth:`` -- dashboard logins (``session_ttl`` 0 means 86400)."""

    enabled: bool = False
    session_ttl: float = DEFAULT_SESSION_TTL
    users: list[UserConfig] = []


class ApiKeyConfig(_Section, frozen=True):
    """One entry of ``monitoring.api.api_keys:`` (``key``: 32 characters or more)."""

    name: str = ""
    key: str = ""
    role: str = "viewer"


class ApiTlsConfig(_Section, frozen=True):
    """``monitoring.api.tls:`` -- serve the API over HTTPS."""

    cert_file: str = ""
    key_file: str = ""


class ApiConfig(_Section, frozen=True):
    """``monitoring.api:`` -- the HTTP API.

    ``rate_limit`` is requests per second per client IP; the client IP is taken from
    ``X-Forwarded-For`` only when the peer is one of ``trusted_proxies`` (IPs or CIDRs).
    """

    enabled: bool = False
    addr: str = ":8080"
    rate_limit: int = 100
    api_keys: list[ApiKeyConfig] = []
    trusted_proxies: list[str] = []
    tls: ApiTlsConfig | None = None


class DashboardConfig(_Section, frozen=True):
    """``monitoring.dashboard:`` -- the web dashboard (turns the API on)."""

    enabled: bool = False
    path_prefix: str = "/dashboard"
    custom_dir: str | None = None


class MonitoringConfig(_Section, frozen=True):
    """``monitoring:`` -- the HTTP API, its authentication and the dashboard."""

    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    dashboard: DashboardConfig = msgspec.field(default_factory=DashboardConfig)


class GqmConfig(_Section, frozen=True):
    """A whole ``gqm.yaml``. Every section is optional; an empty file is valid."""

    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    app: AppConfig = msgspec.field(default_factory=AppConfig)
    queues: list[QueueConfig] = []
    pools: list[PoolConfigFile] = []
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    monitoring: MonitoringConfig = msgspec.field(default_factory=MonitoringConfig)


# -- problems ------------------------------------------------------------------------------


class Problem(msgspec.Struct, frozen=True):
    """One problem of a configuration: where (``path``, ``line``) and what (``message``).

    ``path`` looks like ``$.pools[1].concurrency``; ``line`` is 1-based, ``None`` when
    unknown (a config built in code). ``str(problem)`` is ``"<path>: <message>"``.
    """

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(ConfigurationError):
    """Raised when a configuration has problems; ``problems`` lists all of them.

    ``str(err)`` is a summary line followed by one line per problem, each starting with
    the source (the file name) and the line: ``gqm.yaml:14: $.pools[1].concurrency: ...``.
    """

    def __init__(self, problems: Sequence[Problem], source: str = "<string>") -> None:
        self.problems: list[Problem] = list(problems)
        self.source = source
        count = len(self.problems)
        lines = [f"invalid configuration in {source}: {count} problem{'' if count == 1 else 's'}"]
        for problem in self.problems:
            where = source if problem.line is None else f"{source}:{problem.line}"
            lines.append(f"{where}: {problem}")
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems, self.source))


_Path: TypeAlias = tuple[str | int, ...]
_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _render(path: _Path) -> str:
    parts = ["$"]
    for segment in path:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif _IDENT.fullmatch(segment):
            parts.append(f".{segment}")
        else:
            parts.append(f"[{json.dumps(segment, ensure_ascii=False)}]")
    return "".join(parts)


class _Report:
    """Collects problems. A value that could not be read (a type error, a bad environment
    reference) marks its path *broken*: checks of that path and below are then skipped,
    so one mistake gives one problem, not a cascade."""

    def __init__(self) -> None:
        self.items: list[tuple[_Path, str, int | None]] = []
        self.broken: set[_Path] = set()
        #: Paths of keys present in the file (to tell "missing" from "empty").
        self.present: set[_Path] = set()
        self.lines: dict[_Path, int] = {}
        #: Paths of strings that came from environment variables.
        self.from_env: set[_Path] = set()

    def broke(self, path: _Path, message: str, line: int | None = None) -> None:
        if self._is_broken(path):
            return
        self.broken.add(path)
        self.items.append((path, message, line))

    def add(self, path: _Path, message: str) -> None:
        if not self._is_broken(path):
            self.items.append((path, message, None))

    def _is_broken(self, path: _Path) -> bool:
        return any(path[:n] in self.broken for n in range(len(path) + 1))

    def bad(self, path: _Path, value: object, allowed: str) -> None:
        """``value`` at ``path`` breaks a rule; ``allowed`` says what would do."""
        self.add(path, _bad(value, path, allowed))

    def at_least(self, path: _Path, value: float, low: float, note: str = "") -> None:
        if value < low:
            self.bad(path, value, f"must be >= {_show(low)}{note}")

    def required(self, path: _Path, value: object, what: str) -> None:
        """An empty or missing ``value`` that must be given."""
        if path in self.present:
            self.bad(path, value, what)
        else:
            self.add(path, f"missing: {what}")

    def line_of(self, path: _Path) -> int | None:
        for n in range(len(path), -1, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                return line
        return None

    def problems(self) -> list[Problem]:
        found = [
            Problem(_render(path), message, line if line is not None else self.line_of(path))
            for path, message, line in self.items
        ]
        return sorted(found, key=lambda p: p.line or 0)


def _show(value: object, path: _Path = ()) -> str:
    """The value as the user wrote it (JSON-like), with secrets hidden."""
    last = path[-1] if path else None
    if isinstance(value, str):
        if last in ("password", "key") and value:
            return f"a secret of {len(value)} characters"
        if last == "url":
            value = _mask_url(value)
        elif last == "password_hash" and len(value) > 10:
            value = value[:10] + "..."
        if len(value) > 80:
            value = value[:77] + "..."
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict | list):
        if not value:
            return "an empty list" if isinstance(value, list) else "an empty mapping"
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            text = ""
        if text and len(text) <= 60 and last not in ("password", "key"):
            return text
        return "a list" if isinstance(value, list) else "a mapping"
    return f"a {type(value).__name__}"


def _bad(value: object, path: _Path, allowed: str) -> str:
    return f"{_show(value, path)} is not allowed: {allowed}"


def _mask_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return url


# -- YAML and environment references --------------------------------------------------------

_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


def _parse_yaml(text: str, report: _Report) -> Any:
    """Parse one YAML document; record the line of every path and flag duplicate keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        _index(node, (), report, set())
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = " ".join(s for s in (err.context, err.problem) if s)
        report.broke((), f"invalid YAML: {what}", mark.line + 1 if mark else None)
        return None
    except yaml.YAMLError as err:
        report.broke((), f"invalid YAML: {err}")
        return None
    finally:
        loader.dispose()


def _index(node: yaml.Node, path: _Path, report: _Report, seen: set[int]) -> None:
    report.lines.setdefault(path, node.start_mark.line + 1)
    if id(node) in seen:  # an alias: its lines are those of the anchor
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            sub = (*path, key)
            if key in first:
                report.broke(
                    sub,
                    f"{_show(key)} is not allowed: duplicate key (first set on line {first[key]})",
                    line,
                )
            else:
                first[key] = line
                report.lines[sub] = line
            _index(value_node, sub, report, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), report, seen)


_REFERENCE: Final = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_REFERENCE_BODY: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def _expand(
    value: Any, path: _Path, report: _Report, env: Mapping[str, str], stack: set[int]
) -> Any:
    """Replace ``${NAME}`` references in every string of the parsed document."""
    if isinstance(value, str):
        return _expand_text(value, path, report, env) if "${" in value else value
    if isinstance(value, dict | list):
        if id(value) in stack:
            report.broke(path, "a recursive YAML alias is not allowed")
            return None
        stack.add(id(value))
        try:
            if isinstance(value, dict):
                return {
                    k: _expand(v, (*path, str(k)), report, env, stack) for k, v in value.items()
                }
            return [_expand(v, (*path, i), report, env, stack) for i, v in enumerate(value)]
        finally:
            stack.discard(id(value))
    return value


def _expand_text(text: str, path: _Path, report: _Report, env: Mapping[str, str]) -> str:
    errors: list[str] = []
    used = False

    def replace(match: re.Match[str]) -> str:
        nonlocal used
        if match.group(0) == "$${":
            return "${"
        used = True
        body = match.group(1)
        if body is None:
            errors.append(
                'an unclosed "${" is not allowed: write ${NAME} or ${NAME:-default}, '
                'or $${ for a literal "${"'
            )
            return ""
        parsed = _REFERENCE_BODY.fullmatch(body)
        if parsed is None:
            errors.append(
                f"{_show('${' + body + '}')} is not allowed: write ${{NAME}} or "
                "${NAME:-default}, NAME made of letters, digits and _"
            )
            return ""
        name, default = parsed.group(1), parsed.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                errors.append(
                    f"environment variable {name} is not set: set it, or give a default "
                    f"with ${{{name}:-default}}"
                )
                return ""
            return default
        return value

    result = _REFERENCE.sub(replace, text)
    for message in errors:
        report.broke(path, message)
    if used:
        report.from_env.add(path)
    return result


# -- decoding: every type error of the document, not only the first --------------------------
#
# msgspec stops at the first error of a decode. To report them all, the document is walked
# here: each Struct field and each list item is converted on its own (msgspec.convert for
# the scalars), and a value that fails is reported and replaced by the field's default, so
# that decoding goes on and the validation rules can still run on the rest.

_ZERO: Final[dict[Any, Any]] = {str: "", int: 0, float: 0.0, bool: False}


@cache
def _fields(cls: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(cls)}


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _optional_of(tp: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return None


def _describe(tp: Any) -> str:
    inner = _optional_of(tp)
    if inner is not None:
        return f"{_describe(inner)} or null"
    if _is_struct(tp):
        return "a mapping"
    if get_origin(tp) is list:
        return "a list"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, "a value"
    )


def _decode(value: Any, tp: Any, path: _Path, report: _Report) -> tuple[bool, Any]:
    """Convert ``value`` to ``tp``, reporting every problem found below ``path``."""
    if tp is Any:
        return True, value
    inner = _optional_of(tp)
    if inner is not None:
        return (True, None) if value is None else _decode(value, inner, path, report)
    if _is_struct(tp):
        return _decode_struct(value, tp, path, report)
    if get_origin(tp) is list:
        if not isinstance(value, list):
            report.broke(path, _bad(value, path, f"expected {_describe(tp)}"))
            return False, None
        (item_type,) = get_args(tp)
        items = []
        for i, item in enumerate(value):
            ok, decoded = _decode(item, item_type, (*path, i), report)
            # A placeholder keeps the indexes of the following items right.
            items.append(decoded if ok else _placeholder(item_type))
        return True, items
    return _decode_scalar(value, tp, path, report)


def _placeholder(tp: Any) -> Any:
    if _is_struct(tp):
        return tp()
    return _ZERO.get(tp)


def _decode_struct(
    value: Any, cls: type[msgspec.Struct], path: _Path, report: _Report
) -> tuple[bool, Any]:
    fields = _fields(cls)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        report.broke(path, _bad(value, path, f"expected a mapping with keys {', '.join(fields)}"))
        return False, None
    # Rule 1: unknown keys are rejected (the original decodes with KnownFields).
    for key in value:
        if key not in fields:
            name = str(key)
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f'did you mean "{close[0]}"? ' if close else ""
            report.broke(
                (*path, name),
                _bad(name, (), f"unknown key ({hint}allowed: {', '.join(fields)})"),
            )
    values: dict[str, Any] = {}
    for name, field_type in fields.items():
        if name not in value:
            continue
        sub = (*path, name)
        report.present.add(sub)
        item = value[name]
        if item is None and _optional_of(field_type) is None and field_type is not Any:
            continue  # an empty value means the default, as in the original
        ok, decoded = _decode(item, field_type, sub, report)
        if ok:
            values[name] = decoded
    return True, cls(**values)


def _decode_scalar(value: Any, tp: Any, path: _Path, report: _Report) -> tuple[bool, Any]:
    candidates = [value]
    if path in report.from_env and isinstance(value, str) and tp is not str:
        # A value from the environment is text; read it as YAML for a number or a bool.
        with contextlib.suppress(yaml.YAMLError):
            candidates.append(yaml.safe_load(value))
    for candidate in candidates:
        try:
            result = msgspec.convert(candidate, tp)
        except msgspec.ValidationError:
            continue
        if isinstance(result, float) and not math.isfinite(result):
            report.broke(path, _bad(value, path, "expected a finite number"))
            return False, None
        return True, result
    hint = ""
    if tp is str and isinstance(value, bool | int | float):
        hint = " (put it in quotes: YAML reads yes/no/on/off as booleans and digits as numbers)"
    report.broke(path, _bad(value, path, f"expected {_describe(tp)}{hint}"))
    return False, None


# -- validation: the 44 rules of the original, adapted, and the port's own --------------------
#
# Each check carries the number of the original's rule (spec/gqm-go-facts.md §1c), or "P"
# for a rule the port adds. Rule 1 (unknown keys) is in _decode_struct.

_QUEUE_NAMES: Final = "use 1-128 characters from A-Z a-z 0-9 . _ : -"
_JOB_TYPES: Final = "use 1-256 printable characters"
_ZONES: Final = 'must be an IANA time zone such as "UTC" or "Asia/Jakarta"'
_ROLE: Final = "must be admin or viewer"


def _check(cfg: GqmConfig, report: _Report) -> None:
    _check_redis(cfg.redis, report)
    _check_app(cfg.app, report)
    declared = _check_queues(cfg.queues, report)
    _check_pools(cfg.pools, declared, report)
    _check_scheduler(cfg.scheduler, report)
    _check_monitoring(cfg.monitoring, report)


def _split_hostport(addr: str) -> tuple[str, int] | None:
    """``(host, port)`` for ``host:port``, ``[v6]:port`` or ``:port``; None otherwise."""
    match = re.fullmatch(r"(?:\[([0-9A-Fa-f:.%\w]+)\]|([^:\[\]\s]*)):(\d{1,5})", addr)
    if match is None or int(match.group(3)) > 65535:
        return None
    return (match.group(1) or match.group(2) or ""), int(match.group(3))


def _is_loopback(addr: str) -> bool:
    """Whether a listen address binds to loopback only (``:8080`` is every interface)."""
    host = (_split_hostport(addr) or ("", 0))[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _zone_ok(name: str) -> bool:
    if name == "UTC":  # always known, even without a tz database (as gqm.cron)
        return True
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _check_redis(r: RedisConfig, report: _Report) -> None:
    at: _Path = ("redis",)
    if r.url is None:
        # P: addr is host:port.
        hostport = _split_hostport(r.addr)
        if hostport is None or not hostport[0] or not hostport[1]:
            report.bad((*at, "addr"), r.addr, 'must be "host:port", e.g. "localhost:6379"')
    else:
        _check_redis_url(r, report)
    # Rule 2: redis.db >= 0.
    report.at_least((*at, "db"), r.db, 0)
    # Rule 3: redis.pool_size >= 0.
    report.at_least((*at, "pool_size"), r.pool_size, 0, " (0 means the driver's default)")
    # P: a key prefix (one trailing colon is tolerated: the original's template drift).
    prefix = r.prefix.removesuffix(":")
    if not prefix or prefix.endswith(":") or any(c in prefix for c in "{} \t\r\n"):
        report.bad(
            (*at, "prefix"), r.prefix, 'must be a prefix such as "gqm", without {} or spaces'
        )
    # P: socket_timeout > 0.
    if r.socket_timeout <= 0:
        report.bad((*at, "socket_timeout"), r.socket_timeout, "must be > 0 seconds")
    # P: a client certificate comes with its key; TLS files need TLS.
    tls = r.tls or (r.url or "").startswith("rediss://")
    for name, partner in (("tls_cert_file", "tls_key_file"), ("tls_key_file", "tls_cert_file")):
        if getattr(r, name) and not getattr(r, partner):
            report.required(
                (*at, partner), getattr(r, partner), f"{name} and {partner} go together"
            )
    for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        if getattr(r, name) and not tls:
            report.bad((*at, name), getattr(r, name), "needs tls: true (or a rediss:// url)")


def _check_redis_url(r: RedisConfig, report: _Report) -> None:
    # P: url is a Redis URL that does not say what the other keys say too.
    at: _Path = ("redis",)
    assert r.url is not None
    try:
        parts = urlsplit(r.url)
        has_password, has_username = parts.password is not None, bool(parts.username)
    except ValueError as err:
        report.bad((*at, "url"), r.url, f"not a URL: {err}")
        return
    if parts.scheme not in ("redis", "rediss", "unix"):
        report.bad((*at, "url"), r.url, "must start with redis://, rediss:// or unix://")
        return
    query = dict(parse_qsl(parts.query))
    once = "the url already has one (give it in one place only)"
    if r.password and (has_password or "password" in query):
        report.bad((*at, "password"), r.password, once)
    if r.username and (has_username or "username" in query):
        report.bad((*at, "username"), r.username, once)
    url_db = parts.path.strip("/") if parts.scheme != "unix" else query.get("db")
    if r.db and url_db:
        report.bad((*at, "db"), r.db, once)
    if parts.scheme == "unix" and r.tls:
        report.bad((*at, "tls"), r.tls, "TLS is not possible over a unix socket")


def _check_app(a: AppConfig, report: _Report) -> None:
    at: _Path = ("app",)
    # Rule 4: a valid IANA time zone.
    if not _zone_ok(a.timezone):
        report.bad((*at, "timezone"), a.timezone, _ZONES)
    # Rule 5: log_level in debug, info, warn, error (in any case, as the original).
    if a.log_level.lower() not in _LOG_LEVELS:
        report.bad((*at, "log_level"), a.log_level, "must be debug, info, warn or error")
    # Rule 6: shutdown_timeout >= 0.
    report.at_least((*at, "shutdown_timeout"), a.shutdown_timeout, 0)
    # Rule 7: global_job_timeout >= 0.
    report.at_least((*at, "global_job_timeout"), a.global_job_timeout, 0, " (0: the default)")
    # Rule 8: grace_period >= 0.
    report.at_least((*at, "grace_period"), a.grace_period, 0)
    # Rules 9 and 10: result_ttl and failure_ttl >= -1.
    for name in ("result_ttl", "failure_ttl"):
        keep = " (-1 keeps for ever, 0 deletes at once)"
        report.at_least((*at, name), getattr(a, name), -1, keep)
    # P: lease_ttl >= 1 and max_recoveries >= 0.
    report.at_least((*at, "lease_ttl"), a.lease_ttl, 1, " second")
    report.at_least((*at, "max_recoveries"), a.max_recoveries, 0)


def _check_queues(queues: list[QueueConfig], report: _Report) -> set[str]:
    """Check ``queues``; return the declared names (with the implicit ``default``)."""
    declared = {"default"}
    first: dict[str, int] = {}
    for i, queue in enumerate(queues):
        at: _Path = ("queues", i, "name")
        if not queue.name:
            # Rule 11: a queue has a name.
            report.required(at, queue.name, "a queue needs a name")
        elif not QUEUE_NAME_RE.fullmatch(queue.name):
            # Rule 12: gqm's queue name rule.
            report.bad(at, queue.name, _QUEUE_NAMES)
        elif queue.name in first:
            # Rule 13: names are unique ("default" is declared implicitly and may be listed).
            report.bad(at, queue.name, f"already declared by queues[{first[queue.name]}]")
        else:
            first[queue.name] = i
            declared.add(queue.name)
    return declared


def _check_pools(pools: list[PoolConfigFile], declared: set[str], report: _Report) -> None:
    first: dict[str, int] = {}
    owner: dict[str, int] = {}
    catch_all: int | None = None
    for i, pool in enumerate(pools):
        at: _Path = ("pools", i)
        if not pool.name:
            # Rule 14: a pool has a name.
            report.required((*at, "name"), pool.name, "a pool needs a name")
        elif pool.name in first:
            # Rule 15: pool names are unique.
            report.bad((*at, "name"), pool.name, f"already the name of pools[{first[pool.name]}]")
        else:
            first[pool.name] = i
        if not pool.job_types:
            # Rule 16: job_types is not empty.
            why = 'list job types, or ["*"] for all the others'
            report.required((*at, "job_types"), pool.job_types, why)
        elif "*" in pool.job_types and len(pool.job_types) > 1:
            # Rule 19: "*" is the only job type of its list.
            j = pool.job_types.index("*")
            report.bad((*at, "job_types", j), "*", '"*" must be the only job type of its pool')
        elif pool.job_types == ["*"]:
            # Rule 18: at most one catch-all pool.
            if catch_all is not None:
                why = f"pools[{catch_all}] already takes every job type (one catch-all pool)"
                report.bad((*at, "job_types"), ["*"], why)
            catch_all = i if catch_all is None else catch_all
        else:
            for j, job_type in enumerate(pool.job_types):
                k = owner.setdefault(job_type, i)
                if not _job_type_ok(job_type):
                    # P: a usable job type name.
                    report.bad((*at, "job_types", j), job_type, _JOB_TYPES)
                elif k != i:
                    # Rule 20: a job type belongs to one pool only.
                    why = f'already belongs to pool "{pools[k].name}" (pools[{k}])'
                    report.bad((*at, "job_types", j), job_type, why)
                elif pool.job_types.index(job_type) != j:
                    report.bad((*at, "job_types", j), job_type, "listed twice")
        # P: a pool reads at least one queue, each once.
        if not pool.queues:
            report.required((*at, "queues"), pool.queues, "a pool reads at least one queue")
        for j, queue in enumerate(pool.queues):
            if queue not in declared:
                # Rule 17: every queue of a pool is declared ("default" implicitly is).
                known = ", ".join(sorted(declared))
                why = f"not a declared queue: declare it under queues (declared: {known})"
                report.bad((*at, "queues", j), queue, why)
            elif pool.queues.index(queue) != j:
                report.bad((*at, "queues", j), queue, "listed twice")
        # Rule 21: concurrency >= 0.
        cpus = " (0 means the number of CPUs)"
        report.at_least((*at, "concurrency"), pool.concurrency, 0, cpus)
        # Rule 22: a known dequeue strategy.
        if pool.dequeue_strategy not in _STRATEGIES:
            strategies = "must be strict, round_robin or weighted"
            report.bad((*at, "dequeue_strategy"), pool.dequeue_strategy, strategies)
        # P: the pool's other numbers are not negative.
        global_timeout = " (0 means app.global_job_timeout)"
        report.at_least((*at, "job_timeout"), pool.job_timeout, 0, global_timeout)
        report.at_least((*at, "prefetch"), pool.prefetch or 0, 0)
        report.at_least((*at, "grace_period"), pool.grace_period, 0)
        report.at_least((*at, "shutdown_timeout"), pool.shutdown_timeout, 0)
        if pool.retry is not None:
            _check_retry(pool.retry, (*at, "retry"), report)


def _job_type_ok(name: str) -> bool:
    try:
        check_job_type(name)
    except ConfigurationError:
        return False
    return True


def _check_retry(retry: RetryConfig, at: _Path, report: _Report) -> None:
    if retry.backoff not in _BACKOFFS:
        # Rule 23: a known backoff.
        report.bad((*at, "backoff"), retry.backoff, "must be fixed, exponential or custom")
    elif retry.backoff == "custom" and not retry.intervals:
        # Rule 24: a custom backoff needs intervals.
        why = "backoff custom needs the delays, e.g. [10, 60]"
        report.required((*at, "intervals"), retry.intervals, why)
    # P: the numbers of a retry policy are not negative.
    report.at_least((*at, "max_retry"), retry.max_retry, 0)
    report.at_least((*at, "backoff_base"), retry.backoff_base, 0)
    report.at_least((*at, "backoff_max"), retry.backoff_max, 0)
    for j, interval in enumerate(retry.intervals):
        report.at_least((*at, "intervals", j), interval, 0)


def _check_scheduler(s: SchedulerConfig, report: _Report) -> None:
    at: _Path = ("scheduler",)
    # Rule 25: poll_interval >= 0.
    report.at_least((*at, "poll_interval"), s.poll_interval, 0, " (0: the default)")
    # P: misfire_grace > 0 (0 would skip every tick: a fire is always a little late).
    if s.misfire_grace <= 0:
        report.bad((*at, "misfire_grace"), s.misfire_grace, "must be > 0 seconds")
    first: dict[str, int] = {}
    for i, entry in enumerate(s.cron_entries):
        _check_cron_entry(entry, (*at, "cron_entries", i), first, report)
        first.setdefault(entry.id, i)


def _check_cron_entry(
    entry: CronEntryConfig, at: _Path, first: dict[str, int], report: _Report
) -> None:
    if not entry.id:
        # Rule 26: an entry has an id.
        report.required((*at, "id"), entry.id, "a cron entry needs an id")
    elif any(c.isspace() for c in entry.id):
        # P: without whitespace (it keys the entry's state in Redis).
        report.bad((*at, "id"), entry.id, "an id must not contain whitespace")
    elif entry.id in first:
        # Rule 27: ids are unique.
        report.bad((*at, "id"), entry.id, f"already the id of cron_entries[{first[entry.id]}]")
    if not entry.cron_expr.strip():
        # Rule 28: cron_expr is not empty.
        why = 'a cron entry needs a cron_expr, e.g. "0 0 2 * * *"'
        report.required((*at, "cron_expr"), entry.cron_expr, why)
    else:
        # Rule 29: cron_expr parses (6 fields with seconds first, 5, or a macro).
        try:
            CronSchedule.parse(entry.cron_expr, "UTC")
        except ConfigurationError as err:
            why = str(err).removeprefix(f'cron "{entry.cron_expr}": ')
            report.bad((*at, "cron_expr"), entry.cron_expr, why)
    if not entry.job_type:
        # Rule 30: job_type is not empty.
        why = "a cron entry needs the job_type it enqueues"
        report.required((*at, "job_type"), entry.job_type, why)
    elif not _job_type_ok(entry.job_type):
        # P: a usable job type name.
        report.bad((*at, "job_type"), entry.job_type, _JOB_TYPES)
    if entry.timezone and not _zone_ok(entry.timezone):
        # Rule 31: a valid IANA time zone (empty means app.timezone).
        report.bad((*at, "timezone"), entry.timezone, _ZONES)
    if entry.overlap_policy not in _OVERLAPS:
        # Rule 32: a known overlap policy.
        report.bad((*at, "overlap_policy"), entry.overlap_policy, "must be skip, allow or replace")
    # Rule 33: the payload is JSON (a string is JSON text, as in the original).
    try:
        _cron_payload(entry.payload)
    except (msgspec.DecodeError, msgspec.EncodeError, TypeError, ValueError) as err:
        report.bad((*at, "payload"), entry.payload, f"not valid JSON: {err}")
    if not QUEUE_NAME_RE.fullmatch(entry.queue):
        # P: gqm's queue name rule.
        report.bad((*at, "queue"), entry.queue, _QUEUE_NAMES)
    # P: the original's per-entry timeout and max_retry are refused, not ignored.
    for name in ("timeout", "max_retry"):
        if getattr(entry, name):
            why = f"a cron entry has no {name} of its own: set it on the handler or the pool"
            report.bad((*at, name), getattr(entry, name), why)


def _cron_payload(payload: Any) -> Any:
    """The payload of a cron entry: a string is JSON text (the original's form)."""
    if isinstance(payload, str):
        return msgspec.json.decode(payload) if payload.strip() else None
    json_encoder.encode(payload)
    return payload


def _check_monitoring(m: MonitoringConfig, report: _Report) -> None:
    at: _Path = ("monitoring",)
    auth, api = m.auth, m.api
    # P: api.addr is host:port.
    addr_ok = _split_hostport(api.addr) is not None
    if not addr_ok:
        report.bad((*at, "api", "addr"), api.addr, 'must be "host:port" or ":port"')
    # Rule 34: the dashboard turns the API on.
    api_on = api.enabled or m.dashboard.enabled
    # Rule 35: no auth and no API keys on a non-loopback address is refused.
    if api_on and addr_ok and not auth.enabled and not api.api_keys and not _is_loopback(api.addr):
        why = (
            "auth is disabled and there are no API keys, so anyone who can reach this address "
            "would get the admin API: set monitoring.auth.enabled: true, add "
            'monitoring.api.api_keys, or listen on loopback such as "127.0.0.1:8080"'
        )
        report.bad((*at, "api", "addr"), api.addr, why)
    # Rule 36: auth needs at least one user.
    if auth.enabled and not auth.users:
        why = "auth is enabled, so at least one user is needed (see `gqm hash-password`)"
        report.required((*at, "auth", "users"), auth.users, why)
    users: dict[str, int] = {}
    for i, user in enumerate(auth.users):
        _check_user(user, (*at, "auth", "users", i), users, report)
        users.setdefault(user.username, i)
    # Rule 41: session_ttl >= 0.
    report.at_least((*at, "auth", "session_ttl"), auth.session_ttl, 0, " (0 means 86400)")
    keys: dict[str, int] = {}
    for i, api_key in enumerate(api.api_keys):
        _check_api_key(api_key, (*at, "api", "api_keys", i), keys, report)
        keys.setdefault(api_key.name, i)
    # P: rate_limit > 0.
    if api.rate_limit <= 0:
        why = "must be > 0 requests per second per client IP (it cannot be turned off)"
        report.bad((*at, "api", "rate_limit"), api.rate_limit, why)
    # P: trusted proxies are IP addresses or networks.
    for i, proxy in enumerate(api.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            why = 'must be an IP address or a network such as "10.0.0.0/8"'
            report.bad((*at, "api", "trusted_proxies", i), proxy, why)
    # P: the API's certificate and key go together.
    if api.tls is not None:
        for name, partner in (("cert_file", "key_file"), ("key_file", "cert_file")):
            if getattr(api.tls, name) and not getattr(api.tls, partner):
                why = f"{name} and {partner} go together"
                report.required((*at, "api", "tls", partner), getattr(api.tls, partner), why)
    # P: the dashboard's path prefix is a URL path.
    prefix = m.dashboard.path_prefix
    if not re.fullmatch(r"/[^\s?#]*[^\s?#/]", prefix):
        why = 'must be a URL path such as "/dashboard" (no trailing "/")'
        report.bad((*at, "dashboard", "path_prefix"), prefix, why)


def _check_user(user: UserConfig, at: _Path, first: dict[str, int], report: _Report) -> None:
    if not user.username:
        # Rule 37: username is not empty.
        report.required((*at, "username"), user.username, "a user needs a username")
    elif user.username in first:
        # P: usernames are unique.
        report.bad((*at, "username"), user.username, f"already users[{first[user.username]}]")
    hashed = user.password_hash
    if not hashed:
        # Rule 38: password_hash is not empty.
        why = "create one with `gqm hash-password` (argon2id)"
        report.required((*at, "password_hash"), hashed, why)
    elif hashed.startswith(_BCRYPT_PREFIXES):
        # Rule 39 (adapted): bcrypt, the original's format, is refused with the way out.
        why = "bcrypt hashes are not supported: re-hash with `gqm hash-password` (argon2id)"
        report.bad((*at, "password_hash"), hashed, why)
    elif not _ARGON2ID.fullmatch(hashed):
        # Rule 39 (adapted): an argon2id hash.
        why = "must be an argon2id hash ($argon2id$...): create one with `gqm hash-password`"
        report.bad((*at, "password_hash"), hashed, why)
    if user.role not in _ROLES:
        # Rule 40: role is admin or viewer.
        report.bad((*at, "role"), user.role, _ROLE)


def _check_api_key(key: ApiKeyConfig, at: _Path, first: dict[str, int], report: _Report) -> None:
    if not key.name:
        # Rule 42: an API key has a name.
        report.required((*at, "name"), key.name, "an API key needs a name")
    elif key.name in first:
        # P: API key names are unique.
        report.bad((*at, "name"), key.name, f"already api_keys[{first[key.name]}]")
    if not key.key:
        # Rule 43: the key is not empty ...
        report.required((*at, "key"), key.key, "create one with `gqm generate-api-key`")
    elif len(key.key) < MIN_API_KEY_LENGTH:
        # Rule 43: ... and is 32 characters or more (no gqm_ak_ prefix is required).
        why = f"must be {MIN_API_KEY_LENGTH} characters or more (see `gqm generate-api-key`)"
        report.bad((*at, "key"), key.key, why)
    if key.role not in _ROLES:
        # Rule 44: role is admin or viewer.
        report.bad((*at, "role"), key.role, _ROLE)


# -- loading ---------------------------------------------------------------------------------


def _normalize(cfg: GqmConfig) -> GqmConfig:
    """Resolve the placeholders (0 = default, "" = unset) of a valid config."""
    replace = msgspec.structs.replace
    r, a, s, m = cfg.redis, cfg.app, cfg.scheduler, cfg.monitoring
    redis = replace(
        r,
        prefix=r.prefix.removesuffix(":"),
        tls_ca_file=r.tls_ca_file or None,
        tls_cert_file=r.tls_cert_file or None,
        tls_key_file=r.tls_key_file or None,
    )
    app = replace(
        a,
        log_level=a.log_level.lower(),
        global_job_timeout=a.global_job_timeout or DEFAULT_GLOBAL_JOB_TIMEOUT,
    )
    entries = [replace(e, timezone=e.timezone or app.timezone) for e in s.cron_entries]
    scheduler = replace(
        s, poll_interval=s.poll_interval or DEFAULT_POLL_INTERVAL, cron_entries=entries
    )
    monitoring = replace(
        m,
        auth=replace(m.auth, session_ttl=m.auth.session_ttl or DEFAULT_SESSION_TTL),
        api=replace(m.api, enabled=m.api.enabled or m.dashboard.enabled),
    )
    return replace(cfg, redis=redis, app=app, scheduler=scheduler, monitoring=monitoring)


def _load(data: Any, report: _Report, source: str) -> GqmConfig:
    cfg = None
    if () not in report.broken:
        _, cfg = _decode(data, GqmConfig, (), report)
        if isinstance(cfg, GqmConfig):
            _check(cfg, report)
    if report.items or not isinstance(cfg, GqmConfig):
        raise ConfigError(report.problems(), source)
    return _normalize(cfg)


def load_config(
    text: str | bytes, *, source: str = "<string>", env: Mapping[str, str] | None = None
) -> GqmConfig:
    """Parse and validate a YAML configuration.

    :param text: the YAML document.
    :param source: the name used in error messages (a file name).
    :param env: the variables for ``${NAME}`` references (default: ``os.environ``).
    :raises ConfigError: with every problem of the document.
    """
    report = _Report()
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError([Problem("$", f"not UTF-8 text: {err}")], source) from None
    data = _parse_yaml(text, report)
    if () not in report.broken:
        data = _expand(data, (), report, os.environ if env is None else env, set())
    return _load(data, report, source)


def load_config_file(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> GqmConfig:
    """Read, parse and validate a YAML configuration file (UTF-8).

    :raises ConfigError: with every problem of the file; messages start with its name.
    """
    source = os.fspath(path)
    try:
        text = Path(source).read_bytes()
    except OSError as err:
        reason = err.strerror or str(err)
        raise ConfigError([Problem("$", f"cannot read the file: {reason}")], source) from err
    return load_config(text, source=source, env=env)


# -- what gqm.Server needs ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """What a configuration gives :class:`gqm.Server`.

    ``Server.from_config`` builds ``Server(**{**kwargs, **overrides})`` (code always
    overrides the file), then registers ``pools`` and ``cron``. ``config`` is the
    validated configuration with its placeholders resolved, for the rest
    (``monitoring``, ``app.log_level``, ``app.shutdown_timeout``).
    """

    kwargs: dict[str, Any]
    pools: list[PoolConfig]
    cron: list[CronEntry]
    config: GqmConfig


def server_options(cfg: GqmConfig) -> ServerOptions:
    """Translate a configuration into :class:`ServerOptions`.

    The configuration is validated again (it may have been built in code), and a TLS
    context is built when ``redis.tls_*_file`` are set.

    :raises ConfigError: when the configuration has problems, or a TLS file cannot be
        loaded.
    """
    data = msgspec.to_builtins(cfg)
    # Payloads stay as they are: to_builtins would turn a date into text, read as JSON.
    entries = data["scheduler"]["cron_entries"]
    for item, entry in zip(entries, cfg.scheduler.cron_entries, strict=True):
        item["payload"] = entry.payload
    cfg = _load(data, _Report(), "<GqmConfig>")
    r, a, s = cfg.redis, cfg.app, cfg.scheduler
    kwargs: dict[str, Any] = {
        "redis": _redis_url(r),
        "prefix": r.prefix,
        "socket_timeout": r.socket_timeout,
        "lease_ttl": a.lease_ttl,
        "max_recoveries": a.max_recoveries,
        "grace_period": a.grace_period,
        "global_timeout": a.global_job_timeout,
        "completed_ttl": a.result_ttl,
        "dead_ttl": a.failure_ttl,
        "poll_interval": s.poll_interval,
        "scheduler": s.enabled,
        "misfire_grace": s.misfire_grace,
    }
    if r.pool_size > 0:
        kwargs["max_connections"] = r.pool_size
    context = _ssl_context(r)
    if context is not None:
        kwargs["ssl"] = context
    pools: list[PoolConfig] = []
    cron: list[CronEntry] = []
    path: _Path = ()
    try:  # the rules should have caught everything; if not, still say where
        for i, pool in enumerate(cfg.pools):
            path = ("pools", i)
            pools.append(_pool_config(pool))
        for i, entry in enumerate(s.cron_entries):
            path = ("scheduler", "cron_entries", i)
            cron.append(_cron_entry(entry))
        m = cfg.monitoring
        if m.api.enabled or m.dashboard.enabled:
            path = ("monitoring", "api")
            kwargs["api"] = _web_settings(m)
    except ConfigurationError as err:
        raise ConfigError([Problem(_render(path), str(err))], "<GqmConfig>") from err
    return ServerOptions(kwargs=kwargs, pools=pools, cron=cron, config=cfg)


def _web_settings(m: MonitoringConfig) -> Any:
    """The API settings of ``monitoring:`` (gqm_web is imported only when it is on)."""
    try:
        from gqm_web import WebSettings
    except ImportError:
        raise ConfigurationError(
            "the API is enabled, which needs the web extra: pip install 'gqm[web]'"
        ) from None
    return WebSettings.from_config(m)


def _pool_config(p: PoolConfigFile) -> PoolConfig:
    retry = None
    if p.retry is not None:
        retry = RetryPolicy(
            max_retry=p.retry.max_retry,
            backoff=p.retry.backoff,
            backoff_base=p.retry.backoff_base,
            backoff_max=p.retry.backoff_max,
            intervals=tuple(p.retry.intervals),
        )
    return PoolConfig(
        name=p.name,
        job_types=tuple(p.job_types),
        queues=tuple(p.queues),
        concurrency=p.concurrency,
        job_timeout=p.job_timeout or None,
        dequeue_strategy=p.dequeue_strategy,
        retry_policy=retry,
        prefetch=p.prefetch,
    )


def _cron_entry(e: CronEntryConfig) -> CronEntry:
    return CronEntry(
        id=e.id,
        cron_expr=e.cron_expr,
        job_type=e.job_type,
        name=e.name,
        timezone=e.timezone or "UTC",
        queue=e.queue,
        payload=_cron_payload(e.payload),
        overlap_policy=e.overlap_policy,
        enabled=e.enabled,
    )


def _redis_url(r: RedisConfig) -> str:
    """One URL with everything ``redis:`` says, so that a ``redis=`` override replaces
    all of it (a password given as a keyword would otherwise outlive the override)."""
    username = quote(r.username, safe="")
    password = quote(r.password, safe="")
    if r.url is None:
        host, port = _split_hostport(r.addr) or ("localhost", 6379)
        if ":" in host:
            host = f"[{host}]"
        scheme = "rediss" if r.tls else "redis"
        auth = f"{username}:{password}@" if password else (f"{username}@" if username else "")
        return f"{scheme}://{auth}{host}:{port}/{r.db}"
    parts = urlsplit(r.url)
    if parts.scheme == "unix":
        query = dict(parse_qsl(parts.query))
        for name, value in (("username", r.username), ("password", r.password)):
            if value:
                query[name] = value
        if r.db:
            query["db"] = str(r.db)
        base = r.url.split("?", 1)[0]  # urlunsplit would drop the "//" of "unix:///path"
        return f"{base}?{urlencode(query)}" if query else base
    # The rules made sure that the url and the other keys do not both give a value.
    userinfo, _, hostport = parts.netloc.rpartition("@")
    url_user, colon, url_password = userinfo.partition(":")
    username = url_user or username
    password = url_password if colon else password
    auth = f"{username}:{password}@" if password else (f"{username}@" if username else "")
    path = parts.path if parts.path.strip("/") else (f"/{r.db}" if r.db else parts.path)
    scheme = "rediss" if r.tls else parts.scheme
    return urlunsplit(parts._replace(scheme=scheme, netloc=f"{auth}{hostport}", path=path))


def _ssl_context(r: RedisConfig) -> ssl.SSLContext | None:
    if r.tls_ca_file is None and r.tls_cert_file is None:
        return None
    at = "$.redis.tls_ca_file"
    try:
        context = ssl.create_default_context(cafile=r.tls_ca_file)
        if r.tls_cert_file is not None:
            at = "$.redis.tls_cert_file"
            context.load_cert_chain(r.tls_cert_file, r.tls_key_file)
    except (OSError, ssl.SSLError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ConfigError(
            [Problem(at, f"cannot load the TLS file: {reason}")], "<GqmConfig>"
        ) from err
    return context


# -- the template of `gqm init` --------------------------------------------------------------

TEMPLATE: Final = """\
# gqm.yaml -- configuration of a gqm server (written by `gqm init`).
#
# Durations are in seconds. Unknown keys are errors, so a typo cannot go unnoticed.
# Any value may use environment variables: ${NAME} (an error if NAME is unset),
# ${NAME:-default}, and $${ for a literal "${".

redis:
  addr: "localhost:6379"            # host:port
  # url: "rediss://redis.example.com:6380/0"   # redis://, rediss:// or unix://; wins over addr
  username: ""
  password: "${REDIS_PASSWORD:-}"   # keep secrets out of the file
  db: 0
  prefix: "gqm"                     # keys look like gqm:{queue}:ready
  pool_size: 0                      # connections; 0 = the driver's default
  tls: false                        # true: TLS with the system CA pool (or tls_ca_file)
  # tls_ca_file: "/etc/gqm/redis-ca.pem"
  # tls_cert_file: "/etc/gqm/client.pem"   # a client certificate: cert and key together
  # tls_key_file: "/etc/gqm/client.key"
  socket_timeout: 10

app:
  timezone: "UTC"                   # IANA name; the default of cron entries
  log_level: "info"                 # debug, info, warn, error
  shutdown_timeout: 30              # the original's; gqm stops within grace_period + hand-back
  global_job_timeout: 1800          # jobs without their own timeout (cannot be disabled)
  grace_period: 10                  # running jobs get this long to finish at shutdown
  result_ttl: 604800                # keep completed jobs 7 days (-1 for ever, 0 not at all)
  failure_ttl: 2592000              # keep dead-letter jobs 30 days (-1 for ever, 0 not at all)
  lease_ttl: 30                     # a crashed worker's jobs run again after about this long
  max_recoveries: 3                 # a job that crashed its worker more often goes to the DLQ

queues:                             # "default" exists without being listed
  - name: "critical"
    priority: 10
  - name: "default"
    priority: 1
  - name: "low"
    priority: 0

pools:
  - name: "main"
    job_types: ["*"]                # every job type that no other pool takes
    queues: ["critical", "default", "low"]   # highest priority first
    concurrency: 10                 # 0 = the number of CPUs
    job_timeout: 0                  # 0 = app.global_job_timeout
    dequeue_strategy: "weighted"    # strict, round_robin, weighted
    # prefetch: 10                  # jobs claimed ahead of free workers (default: concurrency)
    retry:
      max_retry: 3
      backoff: "exponential"        # fixed, exponential, custom
      backoff_base: 10
      backoff_max: 3600
      # intervals: [10, 30, 60]     # the delays of backoff: custom
  # - name: "email"
  #   job_types: ["email.send", "notification.push"]
  #   queues: ["critical"]
  #   concurrency: 5

scheduler:
  enabled: true                     # false for a worker-only server
  poll_interval: 5
  misfire_grace: 60                 # a cron tick later than this is skipped, not fired
  cron_entries: []
  # cron_entries:
  #   - id: "cleanup-daily"
  #     name: "Daily cleanup"
  #     cron_expr: "0 0 2 * * *"    # sec min hour day-of-month month day-of-week
  #     timezone: "UTC"             # default: app.timezone
  #     job_type: "cleanup"
  #     queue: "default"
  #     payload: {days: 30}         # any YAML value, or JSON text
  #     overlap_policy: "skip"      # skip, allow, replace
  #     enabled: true

monitoring:
  auth:
    enabled: false
    session_ttl: 86400
    users: []
    # users:
    #   - username: "admin"
    #     password_hash: "${GQM_ADMIN_PASSWORD_HASH}"   # gqm hash-password (argon2id)
    #     role: "admin"             # admin or viewer
  api:
    enabled: false
    addr: "127.0.0.1:8080"          # without auth or API keys, only loopback is allowed
    rate_limit: 100                 # requests per second per client IP
    trusted_proxies: []             # e.g. ["10.0.0.0/8"]: X-Forwarded-For is believed from these
    api_keys: []
    # api_keys:
    #   - name: "grafana"
    #     key: "${GQM_GRAFANA_API_KEY}"   # gqm generate-api-key (32 characters or more)
    #     role: "viewer"
    # tls:
    #   cert_file: "/etc/gqm/api.pem"
    #   key_file: "/etc/gqm/api.key"
  dashboard:
    enabled: false                  # true also turns the API on
    path_prefix: "/dashboard"
    # custom_dir: "./my-dashboard"  # serve these files instead of the built-in dashboard
"""
"""The configuration file that ``gqm init`` writes: every section, with comments."""
