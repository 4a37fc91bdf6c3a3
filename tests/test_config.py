"""gqm.config: the YAML schema, the original's 44 rules (adapted) and the port's own,
every problem of a file in one run, environment references, and the Server options.

Pure tests: nothing here talks to Redis.
"""

from __future__ import annotations

import datetime
import pickle
import re
import ssl
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

import gqm
from gqm import config as cfgmod
from gqm.config import (
    TEMPLATE,
    ApiConfig,
    AppConfig,
    ConfigError,
    CronEntryConfig,
    GqmConfig,
    PoolConfigFile,
    Problem,
    RedisConfig,
    RetryConfig,
    SchedulerConfig,
    load_config,
    load_config_file,
    server_options,
)

DATA = Path(__file__).parent / "data"

#: A real argon2id hash (of "x"), as `gqm hash-password` writes them.
HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$NtltSGW3eWtYbtuxmgGuUA"
    "$24oF/CO6gcEl641nC900dvTHoE3zJ9hf12j/jDrJzo8"
)
BCRYPT = "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"
KEY = "gqm_ak_0123456789abcdef0123456789abcdef"
#: A self-signed test certificate and its key (EC P-256, test use only).
TEST_CERT = """\
-----BEGIN CERTIFICATE-----
MIIBfTCCASOgAwIBAgIUZ10QPz4o/2CADm9w03CwHFSutakwCgYIKoZIzj0EAwIw
EzERMA8GA1UEAwwIZ3FtLXRlc3QwIBcNMjYxMjAzMTc0ODMwWhgPMjEyNjExMDkx
NzQ4MzBaMBMxETAPBgNVBAMMCGdxbS10ZXN0MFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEHizTYap26Go1gL4ZzUFh1i/66A3+/PW4G05iM8018DwcKlAvlFP5Z5/a
g6yVwPeMaSKEH0344bw/urGl1qnaE6NTMFEwHQYDVR0OBBYEFOKyXnxavGsJ0Qoj
+jLGB5W5Y1hIMB8GA1UdIwQYMBaAFOKyXnxavGsJ0Qoj+jLGB5W5Y1hIMA8GA1Ud
EwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgWbF0oizXCdCLDRVCFTLKX3mZ
Yufpr4BmrBjQrbT3P8gCIQDev7FEKq9JQnHZsJNpqXoiUtnSCkGryP5VLVLLdp2l
dw==
-----END CERTIFICATE-----
"""
TEST_KEY = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgEjBJXYJHic5fMEhT
GyUNj9p2sd88MTv27T4IAxlnGwihRANCAAQeLNNhqnboajWAvhnNQWHWL/roDf78
9bgbTmIzzTXwPBwqUC+UU/lnn9qDrJXA94xpIoQfTfjhvD+6saXWqdoT
-----END PRIVATE KEY-----
"""


def _doc(text: str) -> str:
    """A test document: dedented, with HASH, BCRYPT and KEY filled in."""
    text = textwrap.dedent(text)
    return text.replace("HASH", HASH).replace("BCRYPT", BCRYPT).replace("KEY", KEY)


def load(text: str, **env: str) -> GqmConfig:
    """Load a test document with exactly the environment ``env``."""
    return load_config(_doc(text), env=env)


def problems(text: str, **env: str) -> list[Problem]:
    """The problems of a test document that must not load."""
    with pytest.raises(ConfigError) as info:
        load(text, **env)
    return info.value.problems


# -- one valid and one invalid case per rule -------------------------------------------------

CRON = "{id: c, cron_expr: '0 0 2 * * *', job_type: cleanup"
USER = "{username: admin, password_hash: 'HASH', role: admin"
APIKEY = "{name: grafana, key: KEY, role: viewer"


def _cron(extra: str = "", *, base: str = CRON) -> str:
    return "scheduler: {cron_entries: [" + base + extra + "}]}"


def _user(extra: str = "", *, base: str = USER) -> str:
    return "monitoring: {auth: {enabled: true, users: [" + base + extra + "}]}}"


def _key(extra: str = "", *, base: str = APIKEY) -> str:
    return "monitoring: {api: {api_keys: [" + base + extra + "}]}}"


def _pool(extra: str) -> str:
    return "pools: [{name: a, job_types: [x]" + extra + "}]"


P0 = "$.pools[0]"
C0 = "$.scheduler.cron_entries[0]"
U0 = "$.monitoring.auth.users[0]"
K0 = "$.monitoring.api.api_keys[0]"

# (valid document, invalid document, path of the one problem, fragment of its message)
RULES = [
    # 1: unknown keys are rejected, with a suggestion.
    ("1", _pool(", concurrency: 2"), _pool(", concurency: 2"), f"{P0}.concurency",
     '"concurency" is not allowed: unknown key (did you mean "concurrency"?'),
    # 2-3: redis numbers.
    ("2", "redis: {db: 3}", "redis: {db: -1}", "$.redis.db", "-1 is not allowed: must be >= 0"),
    ("3", "redis: {pool_size: 20}", "redis: {pool_size: -1}", "$.redis.pool_size", ">= 0"),
    # 4-10: app.
    ("4", "app: {timezone: Asia/Jakarta}", "app: {timezone: Mars/Olympus}", "$.app.timezone",
     '"Mars/Olympus" is not allowed: must be an IANA time zone'),
    ("5", "app: {log_level: WARN}", "app: {log_level: verbose}", "$.app.log_level",
     "must be debug, info, warn or error"),
    ("6", "app: {shutdown_timeout: 0}", "app: {shutdown_timeout: -1}", "$.app.shutdown_timeout",
     ">= 0"),
    ("7", "app: {global_job_timeout: 0}", "app: {global_job_timeout: -5}",
     "$.app.global_job_timeout", "-5 is not allowed: must be >= 0"),
    ("8", "app: {grace_period: 0}", "app: {grace_period: -1}", "$.app.grace_period", ">= 0"),
    ("9", "app: {result_ttl: -1}", "app: {result_ttl: -2}", "$.app.result_ttl",
     "must be >= -1 (-1 keeps for ever, 0 deletes at once)"),
    ("10", "app: {failure_ttl: 0}", "app: {failure_ttl: -2}", "$.app.failure_ttl", ">= -1"),
    # 11-13: queues.
    ("11", "queues: [{name: emails}]", "queues: [{priority: 3}]", "$.queues[0].name",
     "missing: a queue needs a name"),
    ("12", "queues: [{name: 'tenant-1:emails.v2_x'}]", "queues: [{name: 'emails now'}]",
     "$.queues[0].name", "use 1-128 characters from A-Z a-z 0-9 . _ : -"),
    ("13", "queues: [{name: a}, {name: b}, {name: default}]", "queues: [{name: a}, {name: a}]",
     "$.queues[1].name", '"a" is not allowed: already declared by queues[0]'),
    # 14-24: pools.
    ("14", _pool(""), "pools: [{job_types: [x]}]", f"{P0}.name", "missing: a pool needs a name"),
    ("15", "pools: [{name: a, job_types: [x]}, {name: b, job_types: [y]}]",
     "pools: [{name: a, job_types: [x]}, {name: a, job_types: [y]}]", "$.pools[1].name",
     "already the name of pools[0]"),
    ("16", _pool(""), "pools: [{name: a, job_types: []}]", f"{P0}.job_types",
     "an empty list is not allowed"),
    ("17", "queues: [{name: emails}]\n" + _pool(", queues: [emails, default]"),
     _pool(", queues: [emails]"), f"{P0}.queues[0]",
     '"emails" is not allowed: not a declared queue'),
    ("18", "pools: [{name: a, job_types: ['*']}, {name: b, job_types: [x]}]",
     "pools: [{name: a, job_types: ['*']}, {name: b, job_types: ['*']}]", "$.pools[1].job_types",
     'pools[0] already takes every job type'),
    ("19", "pools: [{name: a, job_types: ['*']}]", "pools: [{name: a, job_types: [x, '*']}]",
     f"{P0}.job_types[1]", '"*" must be the only job type'),
    ("20", "pools: [{name: a, job_types: [x]}, {name: b, job_types: [y]}]",
     "pools: [{name: a, job_types: [x]}, {name: b, job_types: [y, x]}]",
     "$.pools[1].job_types[1]", '"x" is not allowed: already belongs to pool "a" (pools[0])'),
    ("21", _pool(", concurrency: 0"), _pool(", concurrency: -2"), f"{P0}.concurrency",
     "-2 is not allowed: must be >= 0 (0 means the number of CPUs)"),
    ("22", _pool(", dequeue_strategy: round_robin"), _pool(", dequeue_strategy: fifo"),
     f"{P0}.dequeue_strategy", '"fifo" is not allowed: must be strict, round_robin or weighted'),
    ("23", _pool(", retry: {backoff: exponential}"), _pool(", retry: {backoff: linear}"),
     f"{P0}.retry.backoff", "must be fixed, exponential or custom"),
    ("24", _pool(", retry: {backoff: custom, intervals: [1, 5]}"),
     _pool(", retry: {backoff: custom}"), f"{P0}.retry.intervals",
     "missing: backoff custom needs the delays"),
    # 25-33: scheduler and cron entries.
    ("25", "scheduler: {poll_interval: 0}", "scheduler: {poll_interval: -1}",
     "$.scheduler.poll_interval", ">= 0"),
    ("26", _cron(), _cron(base="{cron_expr: '* * * * *', job_type: j"), f"{C0}.id",
     "missing: a cron entry needs an id"),
    ("27", "scheduler: {cron_entries: [" + CRON + "}, {id: d, cron_expr: '@daily', job_type: j}]}",
     "scheduler: {cron_entries: [" + CRON + "}, {id: c, cron_expr: '@daily', job_type: j}]}",
     "$.scheduler.cron_entries[1].id", '"c" is not allowed: already the id of cron_entries[0]'),
    ("28", _cron(), _cron(base="{id: c, cron_expr: '', job_type: j"), f"{C0}.cron_expr",
     '"" is not allowed: a cron entry needs a cron_expr'),
    ("29", _cron(base="{id: c, cron_expr: '*/5 * * * *', job_type: j"),
     _cron(base="{id: c, cron_expr: '0 61 * * * *', job_type: j"), f"{C0}.cron_expr",
     '"0 61 * * * *" is not allowed: field 2 (minute) value 61 is out of range 0-59'),
    ("30", _cron(), _cron(base="{id: c, cron_expr: '@daily'"), f"{C0}.job_type",
     "missing: a cron entry needs the job_type"),
    ("31", _cron(", timezone: Europe/Paris"), _cron(", timezone: Nowhere/City"),
     f"{C0}.timezone", '"Nowhere/City" is not allowed: must be an IANA time zone'),
    ("32", _cron(", overlap_policy: replace"), _cron(", overlap_policy: cancel"),
     f"{C0}.overlap_policy", "must be skip, allow or replace"),
    ("33", _cron(""", payload: '{"days": 30}'"""), _cron(", payload: '{days: 30}'"),
     f"{C0}.payload", '"{days: 30}" is not allowed: not valid JSON'),
    # 34-44: monitoring. 34: the dashboard turns the API on, so rule 35 applies to it.
    ("34", "monitoring: {dashboard: {enabled: true}, api: {addr: '127.0.0.1:8080'}}",
     "monitoring: {dashboard: {enabled: true}}", "$.monitoring.api.addr",
     '":8080" is not allowed: auth is disabled and there are no API keys'),
    ("35", "monitoring: {api: {enabled: true, addr: '[::1]:8080'}}",
     "monitoring: {api: {enabled: true, addr: '0.0.0.0:8080'}}", "$.monitoring.api.addr",
     'listen on loopback such as "127.0.0.1:8080"'),
    ("36", _user(), "monitoring: {auth: {enabled: true}}", "$.monitoring.auth.users",
     "missing: auth is enabled, so at least one user is needed"),
    ("37", _user(), _user(base="{password_hash: 'HASH'"), f"{U0}.username",
     "missing: a user needs a username"),
    ("38", _user(), _user(base="{username: admin, password_hash: ''"), f"{U0}.password_hash",
     '"" is not allowed: create one with `gqm hash-password` (argon2id)'),
    ("39", _user(), _user(base="{username: admin, password_hash: 'hunter2'"),
     f"{U0}.password_hash", "must be an argon2id hash ($argon2id$...)"),
    ("40", _user(), _user(base="{username: admin, password_hash: 'HASH', role: root"),
     f"{U0}.role", '"root" is not allowed: must be admin or viewer'),
    ("41", "monitoring: {auth: {session_ttl: 0}}", "monitoring: {auth: {session_ttl: -1}}",
     "$.monitoring.auth.session_ttl", ">= 0 (0 means 86400)"),
    ("42", _key(), _key(base="{key: KEY"), f"{K0}.name", "missing: an API key needs a name"),
    ("43", _key(), _key(base="{name: grafana, key: short"), f"{K0}.key",
     "a secret of 5 characters is not allowed: must be 32 characters or more"),
    ("44", _key(), _key(base="{name: grafana, key: KEY, role: owner"), f"{K0}.role",
     '"owner" is not allowed: must be admin or viewer'),
    # Rules the port adds.
    ("P-redis-addr", "redis: {addr: 'redis.internal:6380'}", "redis: {addr: redis.internal}",
     "$.redis.addr", 'must be "host:port"'),
    ("P-redis-url", "redis: {url: 'rediss://r:6380/2'}", "redis: {url: 'http://r:6380'}",
     "$.redis.url", "must start with redis://, rediss:// or unix://"),
    ("P-redis-url-once", "redis: {url: 'redis://r:6379', password: s3cret}",
     "redis: {url: 'redis://:a@r:6379', password: s3cret}", "$.redis.password",
     "the url already has one"),
    ("P-redis-prefix", "redis: {prefix: 'gqm:'}", "redis: {prefix: 'my app'}", "$.redis.prefix",
     '"my app" is not allowed: must be a prefix such as "gqm"'),
    ("P-socket-timeout", "redis: {socket_timeout: 2.5}", "redis: {socket_timeout: 0}",
     "$.redis.socket_timeout", "must be > 0 seconds"),
    ("P-redis-client-cert", "redis: {tls: true, tls_cert_file: c.pem, tls_key_file: k.pem}",
     "redis: {tls: true, tls_cert_file: c.pem}", "$.redis.tls_key_file",
     "missing: tls_cert_file and tls_key_file go together"),
    ("P-redis-tls-files", "redis: {tls: true, tls_ca_file: ca.pem}",
     "redis: {tls_ca_file: ca.pem}", "$.redis.tls_ca_file", "needs tls: true"),
    ("P-lease-ttl", "app: {lease_ttl: 1}", "app: {lease_ttl: 0.5}", "$.app.lease_ttl",
     "0.5 is not allowed: must be >= 1 second"),
    ("P-max-recoveries", "app: {max_recoveries: 0}", "app: {max_recoveries: -1}",
     "$.app.max_recoveries", ">= 0"),
    ("P-pool-no-queue", _pool(", queues: [default]"), _pool(", queues: []"), f"{P0}.queues",
     "an empty list is not allowed: a pool reads at least one queue"),
    ("P-pool-queue-twice", _pool(", queues: [default]"), _pool(", queues: [default, default]"),
     f"{P0}.queues[1]", '"default" is not allowed: listed twice'),
    ("P-job-type-twice", _pool(""), "pools: [{name: a, job_types: [x, x]}]",
     f"{P0}.job_types[1]", "listed twice"),
    ("P-job-type-name", _pool(""), 'pools: [{name: a, job_types: ["x\\ty"]}]',
     f"{P0}.job_types[0]", "use 1-256 printable characters"),
    ("P-job-timeout", _pool(", job_timeout: 30"), _pool(", job_timeout: -1"),
     f"{P0}.job_timeout", "(0 means app.global_job_timeout)"),
    ("P-prefetch", _pool(", prefetch: 0"), _pool(", prefetch: -1"), f"{P0}.prefetch", ">= 0"),
    ("P-retry-numbers", _pool(", retry: {max_retry: 0}"), _pool(", retry: {max_retry: -1}"),
     f"{P0}.retry.max_retry", ">= 0"),
    ("P-retry-intervals", _pool(", retry: {backoff: custom, intervals: [0, 5]}"),
     _pool(", retry: {backoff: custom, intervals: [5, -1]}"), f"{P0}.retry.intervals[1]", ">= 0"),
    ("P-misfire-grace", "scheduler: {misfire_grace: 0.5}", "scheduler: {misfire_grace: 0}",
     "$.scheduler.misfire_grace", "> 0"),
    ("P-cron-id", _cron(), _cron(base="{id: 'daily cleanup', cron_expr: '@daily', job_type: j"),
     f"{C0}.id", "must not contain whitespace"),
    ("P-cron-queue", _cron(", queue: low.v2"), _cron(", queue: 'low prio'"), f"{C0}.queue",
     "use 1-128 characters"),
    ("P-cron-max-retry", _cron(", max_retry: 0, timeout: 0"), _cron(", max_retry: 5"),
     f"{C0}.max_retry", "5 is not allowed: a cron entry has no max_retry of its own"),
    ("P-api-addr", "monitoring: {api: {addr: ':9090'}}", "monitoring: {api: {addr: '9090'}}",
     "$.monitoring.api.addr", 'must be "host:port" or ":port"'),
    ("P-rate-limit", "monitoring: {api: {rate_limit: 5}}", "monitoring: {api: {rate_limit: 0}}",
     "$.monitoring.api.rate_limit", "must be > 0 requests per second"),
    ("P-trusted-proxies", "monitoring: {api: {trusted_proxies: ['10.0.0.0/8', '::1']}}",
     "monitoring: {api: {trusted_proxies: ['10.0.0.0/8', '10.0.0.300']}}",
     "$.monitoring.api.trusted_proxies[1]", "must be an IP address or a network"),
    ("P-api-tls", "monitoring: {api: {tls: {cert_file: a.pem, key_file: a.key}}}",
     "monitoring: {api: {tls: {cert_file: a.pem}}}", "$.monitoring.api.tls.key_file",
     "missing: cert_file and key_file go together"),
    ("P-path-prefix", "monitoring: {dashboard: {path_prefix: /ops/panel}}",
     "monitoring: {dashboard: {path_prefix: panel/}}", "$.monitoring.dashboard.path_prefix",
     'must be a URL path such as "/dashboard"'),
    ("P-username-unique", _user(), _user("}, " + USER), "$.monitoring.auth.users[1].username",
     '"admin" is not allowed: already users[0]'),
    ("P-key-name-unique", _key(), _key("}, " + APIKEY), "$.monitoring.api.api_keys[1].name",
     '"grafana" is not allowed: already api_keys[0]'),
    ("P-type", "redis: {db: 2}", "redis: {db: two}", "$.redis.db",
     '"two" is not allowed: expected an integer'),
    ("P-finite", "app: {grace_period: 1.5}", "app: {grace_period: .nan}", "$.app.grace_period",
     "expected a finite number"),
    ("P-duplicate-key", "redis:\n  db: 1\n  prefix: x", "redis:\n  db: 1\n  db: 2", "$.redis.db",
     '"db" is not allowed: duplicate key (first set on line 2)'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rule", "valid", "invalid", "path", "fragment"), RULES, ids=[r[0] for r in RULES]
)
def test_rule_accepts_the_valid_case(
    rule: str, valid: str, invalid: str, path: str, fragment: str
) -> None:
    """The valid document of each rule loads."""
    assert isinstance(load(valid), GqmConfig)


@pytest.mark.parametrize(
    ("rule", "valid", "invalid", "path", "fragment"), RULES, ids=[r[0] for r in RULES]
)
def test_rule_rejects_the_invalid_case(
    rule: str, valid: str, invalid: str, path: str, fragment: str
) -> None:
    """The invalid document of each rule gives exactly one problem, at the rule's path,
    naming the value and what is allowed."""
    found = problems(invalid)
    assert [p.path for p in found] == [path], found
    assert fragment in found[0].message


def test_every_rule_of_the_original_is_covered() -> None:
    """The table above has a case for each of the original's 44 rules."""
    numbered = {int(r[0]) for r in RULES if r[0].isdigit()}
    assert numbered == set(range(1, 45))


def test_rule_numbers_are_in_the_code() -> None:
    """Each of the 44 rules is marked by a numbered comment in the module."""
    source = Path(cfgmod.__file__).read_text(encoding="utf-8")
    marked: set[int] = set()
    for match in re.finditer(r"# Rules? (\d+)(?: and (\d+))?", source):
        marked.update(int(n) for n in match.groups() if n)
    assert marked == set(range(1, 45))


def test_bcrypt_hash_gets_the_rehash_message() -> None:
    """The original's bcrypt hashes are refused with the way out (rule 39, adapted)."""
    (real,) = problems(_user(base="{username: admin, password_hash: 'BCRYPT'"))
    assert real.message.startswith('"$2a$10$N9q..." is not allowed: bcrypt hashes')
    for prefix in ("$2a$", "$2b$", "$2y$"):
        found = problems(_user(base="{username: admin, password_hash: '" + prefix + "10$abc'"))
        assert [p.path for p in found] == [f"{U0}.password_hash"]
        assert found[0].message.endswith(
            "bcrypt hashes are not supported: re-hash with `gqm hash-password` (argon2id)"
        )


def test_the_message_matches_the_documented_form() -> None:
    """``str(problem)`` is ``path: value is not allowed: what is``."""
    found = problems(
        "pools: [{name: a, job_types: [x]}, {name: b, job_types: [y], concurrency: -2}]"
    )
    assert str(found[0]) == (
        "$.pools[1].concurrency: -2 is not allowed: must be >= 0 (0 means the number of CPUs)"
    )


# -- all problems at once ----------------------------------------------------------------------


def test_five_mistakes_give_five_problems_in_one_run() -> None:
    """A file with five mistakes reports five problems, each with its path and line."""
    path = DATA / "five_mistakes.yaml"
    marks = {
        int(m.group(1)): n
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if (m := re.search(r"# mistake (\d)", line))
    }
    with pytest.raises(ConfigError) as info:
        load_config_file(path, env={})
    found = info.value.problems
    assert [(p.path, p.line) for p in found] == [
        ("$.redis.db", marks[1]),
        ("$.app.log_level", marks[2]),
        ("$.pools[0].concurrency", marks[3]),
        ("$.pools[1].concurency", marks[4]),
        ("$.scheduler.cron_entries[0].cron_expr", marks[5]),
    ]
    assert "expected an integer" in found[2].message
    assert 'did you mean "concurrency"' in found[3].message
    assert "hour" in found[4].message
    text = str(info.value)
    assert text.splitlines()[0] == f"invalid configuration in {path}: 5 problems"
    assert f"{path}:{marks[3]}: $.pools[0].concurrency: " in text


def test_type_errors_of_several_items_are_all_reported() -> None:
    """msgspec stops at the first error; gqm converts each item on its own."""
    found = problems("""\
        redis: {db: zero, tls: maybe}
        pools:
          - {name: a, job_types: [x], concurrency: ten}
          - {name: b, job_types: [y, 7], job_timeout: soon}
          - just-a-string
        """)
    assert [p.path for p in found] == [
        "$.redis.db",
        "$.redis.tls",
        "$.pools[0].concurrency",
        "$.pools[1].job_types[1]",
        "$.pools[1].job_timeout",
        "$.pools[2]",
    ]
    assert "expected true or false" in found[1].message
    assert "put it in quotes" in found[3].message
    assert found[5].message.startswith('"just-a-string" is not allowed: expected a mapping')


def test_a_broken_value_does_not_cascade() -> None:
    """A value that cannot be read gives one problem, not a second from a rule that sees
    the default in its place (a pool name of the wrong type is not also "missing")."""
    found = problems("pools: [{name: [a], job_types: [x]}, {name: b, job_types: [y]}]")
    assert [p.path for p in found] == ["$.pools[0].name"]


def test_unknown_key_at_a_nested_path() -> None:
    """A typo deep down names its full path and suggests the right key."""
    found = problems("""\
        monitoring:
          auth:
            enabled: true
            users:
              - username: admin
                pasword_hash: "HASH"
        """)
    paths = {p.path: p for p in found}
    typo = paths["$.monitoring.auth.users[0].pasword_hash"]
    assert 'did you mean "password_hash"?' in typo.message
    assert typo.line == 6
    # The hash is then missing, which is a second, separate problem.
    assert "$.monitoring.auth.users[0].password_hash" in paths


def test_unknown_top_level_section() -> None:
    """An unknown section is an error listing the allowed ones."""
    (found,) = problems("server: {concurrency: 3}")
    assert found.path == "$.server"
    assert "allowed: redis, app, queues, pools, scheduler, monitoring" in found.message


def test_document_that_is_not_a_mapping() -> None:
    """The top level must be a mapping."""
    (found,) = problems("- redis\n- app\n")
    assert found.path == "$"
    assert found.message.startswith('["redis", "app"] is not allowed: expected a mapping')


def test_yaml_syntax_error_names_the_line() -> None:
    """A YAML syntax error is one problem with its line."""
    (found,) = problems("redis:\n  db: 1\n  prefix: [gqm\n")
    assert found.path == "$"
    assert found.message.startswith("invalid YAML")
    assert found.line is not None


def test_empty_document_and_empty_values_mean_defaults() -> None:
    """An empty file is the zero config; an empty value is the key's default."""
    assert load("") == load("{}") == GqmConfig()
    cfg = load("redis:\n  password:\n  db:\npools:\nscheduler:\n  cron_entries:\n")
    assert cfg.redis.password == ""
    assert cfg.redis.db == 0
    assert cfg.pools == []


def test_secrets_are_not_echoed() -> None:
    """Passwords and API keys are described, never printed."""
    secret = "hunter2-is-my-password"
    with pytest.raises(ConfigError) as info:
        load_config(
            f"redis: {{url: 'redis://:{secret}@r:6379', password: {secret}}}\n"
            + _doc(_key(base="{name: k, key: short-secret-value"))
        )
    text = str(info.value)
    assert secret not in text
    assert "short-secret-value" not in text
    assert "a secret of 18 characters" in text
    (found,) = problems(f"redis: {{url: 'http://u:{secret}@r:6379'}}")
    assert found.message.startswith('"http://u:***@r:6379" is not allowed')


# -- defaults and placeholders ---------------------------------------------------------------


def test_defaults_match_the_original() -> None:
    """Omitted keys take the original's defaults (and the port's for its own keys)."""
    cfg = load("")
    assert cfg.redis.addr == "localhost:6379"
    assert cfg.redis.prefix == "gqm"
    assert (cfg.app.timezone, cfg.app.log_level) == ("UTC", "info")
    assert (cfg.app.shutdown_timeout, cfg.app.global_job_timeout, cfg.app.grace_period) == (
        30,
        1800,
        10,
    )
    assert (cfg.app.result_ttl, cfg.app.failure_ttl) == (7 * 86400, 30 * 86400)
    assert (cfg.app.lease_ttl, cfg.app.max_recoveries) == (30, 3)
    assert cfg.scheduler.enabled is True
    assert (cfg.scheduler.poll_interval, cfg.scheduler.misfire_grace) == (5, 60)
    assert cfg.monitoring.api.addr == ":8080"
    assert cfg.monitoring.api.rate_limit == 100
    assert cfg.monitoring.auth.session_ttl == 86400
    assert cfg.monitoring.dashboard.path_prefix == "/dashboard"
    pool = load(_pool("")).pools[0]
    assert (pool.queues, pool.concurrency, pool.dequeue_strategy) == (["default"], 0, "weighted")
    entry = load(_cron()).scheduler.cron_entries[0]
    assert (entry.enabled, entry.queue, entry.overlap_policy) == (True, "default", "skip")
    assert (
        load(_user(base="{username: a, password_hash: 'HASH'")).monitoring.auth.users[0].role
        == "viewer"
    )
    assert load(_key(base="{name: k, key: KEY")).monitoring.api.api_keys[0].role == "viewer"


def test_placeholders_are_resolved() -> None:
    """0 means the default where the original says so; the dashboard turns the API on;
    a trailing colon of the prefix is dropped; cron entries get app.timezone."""
    cfg = load("""\
        redis: {prefix: "gqm:"}
        app: {global_job_timeout: 0, timezone: Asia/Jakarta, log_level: WARN}
        scheduler:
          poll_interval: 0
          cron_entries: [{id: c, cron_expr: '@daily', job_type: j}]
        monitoring:
          auth: {session_ttl: 0}
          dashboard: {enabled: true}
          api: {addr: "localhost:8080"}
        """)
    assert cfg.redis.prefix == "gqm"
    assert cfg.app.global_job_timeout == 1800
    assert cfg.app.log_level == "warn"
    assert cfg.scheduler.poll_interval == 5
    assert cfg.scheduler.cron_entries[0].timezone == "Asia/Jakarta"
    assert cfg.monitoring.auth.session_ttl == 86400
    assert cfg.monitoring.api.enabled is True


def test_config_is_frozen() -> None:
    """Loaded sections are immutable value objects."""
    cfg = load("")
    with pytest.raises(AttributeError):
        cfg.redis.db = 3  # type: ignore[misc]


def test_full_file_with_every_key_loads() -> None:
    """A file that sets every key loads (and the template-independent keys round-trip)."""
    cfg = load_config_file(DATA / "full.yaml", env={})
    assert cfg.redis.password == "p@ss word"
    assert cfg.pools[0].retry == RetryConfig(
        max_retry=5, backoff="custom", backoff_base=2, backoff_max=600, intervals=[1, 5, 30]
    )
    assert cfg.monitoring.api.trusted_proxies == ["10.0.0.0/8", "fd00::/8", "192.168.1.1"]
    assert cfg.monitoring.api.tls is not None
    assert cfg.monitoring.api.tls.key_file == "/etc/gqm/api.key"
    assert cfg.monitoring.dashboard.custom_dir == "./my-dashboard"
    assert cfg.scheduler.cron_entries[1].timezone == "Asia/Jakarta"


def test_original_readme_example_loads() -> None:
    """The original README's gqm.yaml loads (with an argon2id hash and a real key)."""
    cfg = load_config_file(DATA / "original_readme.yaml", env={})
    assert [p.name for p in cfg.pools] == ["fast", "background"]
    assert cfg.monitoring.api.addr == ":8080"  # fine: auth is on


def test_msgspec_can_decode_the_schema_directly() -> None:
    """The Structs are plain msgspec Structs (first error only, no rules)."""
    cfg = msgspec.yaml.decode(TEMPLATE.encode(), type=GqmConfig)
    assert cfg.pools[0].name == "main"
    with pytest.raises(msgspec.ValidationError, match="unknown field `concurency`"):
        msgspec.yaml.decode(b"pools: [{name: a, concurency: 1}]", type=GqmConfig)


# -- environment references --------------------------------------------------------------------


def test_env_reference_is_replaced() -> None:
    """``${NAME}`` takes the variable's value."""
    cfg = load(
        "redis: {password: '${REDIS_PASSWORD}', addr: '${HOST}:6379'}", REDIS_PASSWORD="s", HOST="r"
    )
    assert (cfg.redis.password, cfg.redis.addr) == ("s", "r:6379")


def test_unset_env_reference_names_path_and_variable() -> None:
    """An unset variable without a default is a problem naming both."""
    (found,) = problems("redis:\n  password: ${REDIS_PASSWORD}\n")
    assert found.path == "$.redis.password"
    assert found.line == 2
    assert "environment variable REDIS_PASSWORD is not set" in found.message
    assert "${REDIS_PASSWORD:-default}" in found.message


def test_env_default() -> None:
    """``${NAME:-default}`` falls back when the variable is unset or empty."""
    assert load("redis: {password: '${P:-dflt}'}").redis.password == "dflt"
    assert load("redis: {password: '${P:-dflt}'}", P="").redis.password == "dflt"
    assert load("redis: {password: '${P:-dflt}'}", P="set").redis.password == "set"
    assert load("redis: {password: '${P:-}'}").redis.password == ""
    assert load("redis: {password: '${P}'}", P="").redis.password == ""


def test_env_escape() -> None:
    """``$${`` is a literal ``${``; a lone ``$`` is untouched."""
    cfg = load("redis: {password: 'a$${B}c$d'}", B="x")
    assert cfg.redis.password == "a${B}c$d"


def test_env_value_is_not_reparsed_as_yaml_for_strings() -> None:
    """Expansion happens after parsing: quotes or colons from the environment stay text."""
    tricky = 'it\'s: "quoted" # not a comment'
    assert load("redis: {password: '${P}'}", P=tricky).redis.password == tricky


def test_env_value_of_a_number_field() -> None:
    """A non-string field reads the expanded text as a YAML scalar."""
    cfg = load(
        "redis: {db: '${DB:-0}', tls: '${TLS}'}\napp: {grace_period: '${G}'}",
        DB="3",
        TLS="true",
        G="2.5",
    )
    assert (cfg.redis.db, cfg.redis.tls, cfg.app.grace_period) == (3, True, 2.5)
    (found,) = problems("redis: {db: '${DB}'}", DB="three")
    assert found.path == "$.redis.db"
    assert '"three" is not allowed: expected an integer' in found.message


def test_env_references_in_lists_and_payloads() -> None:
    """References work in every string, lists and cron payloads included."""
    cfg = load(
        "monitoring: {api: {trusted_proxies: ['${PROXY}']}}\n" + _cron(", payload: {to: '${TO}'}"),
        PROXY="10.1.0.0/16",
        TO="ops@example.com",
    )
    assert cfg.monitoring.api.trusted_proxies == ["10.1.0.0/16"]
    assert cfg.scheduler.cron_entries[0].payload == {"to": "ops@example.com"}


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("${1BAD}", "NAME made of letters"), ("${OPEN", 'an unclosed "${"'), ("${A:-x", "unclosed")],
)
def test_malformed_env_reference(value: str, fragment: str) -> None:
    """A malformed reference is a problem, not a silent literal."""
    (found,) = problems(f"redis: {{password: '{value}'}}")
    assert found.path == "$.redis.password"
    assert fragment in found.message


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``env=``, references read ``os.environ``."""
    monkeypatch.setenv("GQM_TEST_DB", "4")
    monkeypatch.delenv("GQM_TEST_UNSET", raising=False)
    assert load_config("redis: {db: '${GQM_TEST_DB}'}").redis.db == 4
    with pytest.raises(ConfigError, match="GQM_TEST_UNSET is not set"):
        load_config("redis: {password: '${GQM_TEST_UNSET}'}")


def test_every_problem_with_env_and_rules_together() -> None:
    """Environment problems are reported with the rest of the file's problems."""
    found = problems("redis:\n  password: '${NOPE}'\n  db: -1\n")
    assert [(p.path, p.line) for p in found] == [("$.redis.password", 2), ("$.redis.db", 3)]


# -- files and errors --------------------------------------------------------------------------


def test_load_config_file(tmp_path: Path) -> None:
    """A file loads; its problems start with its name and line."""
    good = tmp_path / "gqm.yaml"
    good.write_text("redis: {db: 1}\n", encoding="utf-8")
    assert load_config_file(good).redis.db == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("redis:\n  db: -1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config_file(bad)
    assert info.value.source == str(bad)
    assert (
        str(info.value).splitlines()[1] == f"{bad}:2: $.redis.db: -1 is not allowed: must be >= 0"
    )


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    """A file that cannot be read is a ConfigError naming it."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config_file(missing)
    assert str(missing) in str(info.value)
    assert "cannot read the file" in str(info.value)


def test_non_utf8_file(tmp_path: Path) -> None:
    """A file that is not UTF-8 is one problem."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("redis: {password: 'caf\xe9'}".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config_file(path)


def test_config_error_is_a_configuration_error() -> None:
    """ConfigError sits in gqm's error tree and pickles with its problems."""
    with pytest.raises(gqm.ConfigurationError) as info:
        load("redis: {db: -1}")
    err = info.value
    assert isinstance(err, ConfigError)
    assert isinstance(err, gqm.GqmError)
    copy = pickle.loads(pickle.dumps(err))
    assert copy.problems == err.problems
    assert str(copy) == str(err)


def test_single_problem_summary_is_singular() -> None:
    """The summary line counts the problems."""
    with pytest.raises(ConfigError, match=r"(?m)<string>: 1 problem$") as info:
        load("redis: {db: -1}")
    assert len(str(info.value).splitlines()) == 2


# -- the template --------------------------------------------------------------------------------


def test_template_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    """The template of `gqm init` loads as it is (its env reference has a default)."""
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    cfg = load_config(TEMPLATE)
    assert cfg.redis.prefix == "gqm"
    assert cfg.pools[0].job_types == ["*"]
    assert server_options(cfg).pools[0].name == "main"


def _uncommented_template() -> str:
    """The template with its commented examples ("# key: value") uncommented."""
    lines = []
    for line in TEMPLATE.splitlines():
        match = re.match(r"^(\s*)#(\s+)((- )?[a-z_]+:.*)$", line)
        lines.append(f"{match.group(1)}{match.group(2)[1:]}{match.group(3)}" if match else line)
    text = "\n".join(lines)
    # The uncommented lists replace the empty ones written above them.
    return re.sub(r"^\s*(cron_entries|users|api_keys): \[\]\n", "", text, flags=re.MULTILINE)


#: Keys accepted for the original's files that the template does not advertise.
_COMPAT_KEYS = {
    ("PoolConfigFile", "grace_period"),
    ("PoolConfigFile", "shutdown_timeout"),
    ("CronEntryConfig", "timeout"),
    ("CronEntryConfig", "max_retry"),
}


def _keys_set(data: Any, tp: Any, seen: set[tuple[str, str]], schema: set[tuple[str, str]]) -> None:
    """Collect the (section, key) pairs that ``data`` sets, and those of the schema."""
    inner = cfgmod._optional_of(tp)
    if inner is not None:
        tp = inner
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        assert isinstance(data, dict), tp
        for field in msgspec.structs.fields(tp):
            schema.add((tp.__name__, field.name))
            if field.name in data:
                seen.add((tp.__name__, field.name))
                _keys_set(data[field.name], field.type, seen, schema)
    elif getattr(tp, "__origin__", None) is list:
        for item in data:
            _keys_set(item, tp.__args__[0], seen, schema)


def test_template_lists_every_key() -> None:
    """Every key of every section appears in the template, set or as a commented example
    (except the keys kept only for the original's files)."""
    seen: set[tuple[str, str]] = set()
    schema: set[tuple[str, str]] = set()
    _keys_set(yaml.safe_load(_uncommented_template()), GqmConfig, seen, schema)
    assert len({section for section, _ in schema}) == 15  # every section was reached
    assert schema - seen == _COMPAT_KEYS


def test_template_has_none_of_the_original_drift() -> None:
    """No trailing-colon prefix and no backoffs that fail validation."""
    assert 'prefix: "gqm:"' not in TEMPLATE
    assert "constant" not in TEMPLATE
    assert "linear" not in TEMPLATE


def test_template_examples_validate_when_uncommented() -> None:
    """The commented examples of the template are valid too once uncommented."""
    text = _uncommented_template()
    text = text.replace("  url:", "  # url:")  # addr or url: one of them
    text = text.replace("tls: false", "tls: true")  # the TLS file examples need TLS
    cfg = load_config(
        text,
        env={"GQM_ADMIN_PASSWORD_HASH": HASH, "GQM_GRAFANA_API_KEY": KEY},
    )
    assert [p.name for p in cfg.pools] == ["main", "email"]
    assert cfg.pools[0].prefetch == 10
    assert cfg.scheduler.cron_entries[0].payload == {"days": 30}
    assert cfg.monitoring.auth.users[0].password_hash == HASH
    assert cfg.monitoring.api.tls is not None
    assert cfg.redis.tls_key_file == "/etc/gqm/client.key"


# -- server options ---------------------------------------------------------------------------


def test_server_options_mapping() -> None:
    """app and scheduler keys become Server keywords under the port's names."""
    opts = server_options(load_config_file(DATA / "full.yaml", env={}))
    api = opts.kwargs.pop("api")  # monitoring.api: see test_monitoring_section_turns_the_api_on
    assert (api.addr, api.rate_limit) == ("0.0.0.0:9090", 50)
    assert opts.kwargs == {
        "redis": "rediss://worker:p%40ss%20word@redis.internal:6380/2",
        "prefix": "myapp",
        "socket_timeout": 5.0,
        "lease_ttl": 15.0,
        "max_recoveries": 5,
        "grace_period": 20.0,
        "global_timeout": 600.0,
        "completed_ttl": -1.0,
        "dead_ttl": 0.0,
        "poll_interval": 2.0,
        "scheduler": False,
        "misfire_grace": 30.0,
        "max_connections": 20,  # redis.pool_size
    }
    assert opts.config.monitoring.api.rate_limit == 50


def test_server_options_pools() -> None:
    """Pools become PoolConfig with a RetryPolicy; 0 timeouts mean none."""
    fast, background = server_options(load_config_file(DATA / "full.yaml", env={})).pools
    assert fast == gqm.PoolConfig(
        name="fast",
        job_types=("email.send", "notification.push"),
        queues=("critical", "default"),
        concurrency=4,
        job_timeout=60,
        dequeue_strategy=gqm.DequeueStrategy.STRICT,
        retry_policy=gqm.RetryPolicy(
            max_retry=5, backoff=gqm.Backoff.CUSTOM, backoff_base=2, backoff_max=600,
            intervals=(1, 5, 30),
        ),
        prefetch=8,
    )  # fmt: skip
    assert background.job_types == ("*",)
    assert background.concurrency >= 1  # 0 became the number of CPUs
    assert background.job_timeout is None
    assert background.retry_policy is None
    assert background.dequeue_strategy is gqm.DequeueStrategy.ROUND_ROBIN


def test_server_options_cron_entries() -> None:
    """Cron entries become CronEntry: payload decoded, timezone defaulted to app.timezone."""
    cleanup, report = server_options(load_config_file(DATA / "full.yaml", env={})).cron
    assert cleanup == gqm.CronEntry(
        id="cleanup-daily",
        name="Daily cleanup",
        cron_expr="0 0 2 * * *",
        timezone="Europe/Paris",
        job_type="cleanup",
        queue="low",
        payload={"days": 30, "dry_run": False},
        overlap_policy=gqm.OverlapPolicy.REPLACE,
        enabled=False,
    )
    assert report.payload == {"format": "pdf"}  # JSON text, the original's form
    assert report.timezone == "Asia/Jakarta"
    assert report.enabled is True


def test_cron_payload_of_any_yaml_type() -> None:
    """A payload is any YAML value (a date too); only a string is read as JSON text."""
    cfg = load(_cron(", payload: {when: 2024-01-31, tags: [a, b]}"))
    (entry,) = server_options(cfg).cron
    assert entry.payload == {"when": datetime.date(2024, 1, 31), "tags": ["a", "b"]}
    (entry,) = server_options(load(_cron(", payload: '\"text\"'"))).cron
    assert entry.payload == "text"
    (entry,) = server_options(load(_cron(", payload: ''"))).cron
    assert entry.payload is None


@pytest.mark.parametrize(
    ("redis", "url"),
    [
        ({}, "redis://localhost:6379/0"),
        ({"addr": "[::1]:7000", "db": 3}, "redis://[::1]:7000/3"),
        ({"password": "p:w/d"}, "redis://:p%3Aw%2Fd@localhost:6379/0"),
        ({"username": "u", "tls": True}, "rediss://u@localhost:6379/0"),
        ({"url": "redis://r:1/4"}, "redis://r:1/4"),
        ({"url": "redis://r:1", "password": "s", "db": 2}, "redis://:s@r:1/2"),
        ({"url": "redis://u@r:1/0", "password": "s"}, "redis://u:s@r:1/0"),
        ({"url": "redis://:s@r:1", "username": "u"}, "redis://u:s@r:1"),
        ({"url": "redis://r:1", "tls": True}, "rediss://r:1"),
        ({"url": "unix:///tmp/redis.sock", "db": 2}, "unix:///tmp/redis.sock?db=2"),
    ],
)
def test_redis_url(redis: dict[str, Any], url: str) -> None:
    """One URL carries addr/url, credentials, db and TLS."""
    cfg = GqmConfig(redis=RedisConfig(**redis))
    assert server_options(cfg).kwargs["redis"] == url


def test_redis_tls_files_build_a_context(tmp_path: Path) -> None:
    """tls_ca_file / tls_cert_file / tls_key_file give Server an SSLContext."""
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text(TEST_CERT, encoding="ascii")
    key.write_text(TEST_KEY, encoding="ascii")
    cfg = GqmConfig(
        redis=RedisConfig(
            tls=True, tls_ca_file=str(cert), tls_cert_file=str(cert), tls_key_file=str(key)
        )
    )
    kwargs = server_options(cfg).kwargs
    assert isinstance(kwargs["ssl"], ssl.SSLContext)
    assert kwargs["redis"].startswith("rediss://")
    assert "ssl" not in server_options(GqmConfig(redis=RedisConfig(tls=True))).kwargs


def test_redis_tls_file_that_cannot_be_loaded(tmp_path: Path) -> None:
    """A missing TLS file is a ConfigError naming the key."""
    cfg = GqmConfig(redis=RedisConfig(tls=True, tls_ca_file=str(tmp_path / "none.pem")))
    with pytest.raises(ConfigError) as info:
        server_options(cfg)
    assert info.value.problems[0].path == "$.redis.tls_ca_file"


def test_server_options_validates_a_config_built_in_code() -> None:
    """A GqmConfig built in code gets the same rules, reported with paths."""
    cfg = GqmConfig(
        app=AppConfig(lease_ttl=0),
        pools=[PoolConfigFile(name="a", job_types=["x"], concurrency=-1)],
        scheduler=SchedulerConfig(
            cron_entries=[CronEntryConfig(id="c", cron_expr="bad", job_type="j")]
        ),
    )
    with pytest.raises(ConfigError) as info:
        server_options(cfg)
    assert [p.path for p in info.value.problems] == [
        "$.app.lease_ttl",
        "$.pools[0].concurrency",
        "$.scheduler.cron_entries[0].cron_expr",
    ]
    assert info.value.source == "<GqmConfig>"


def test_code_overrides_the_file() -> None:
    """``Server(**{**opts.kwargs, **overrides})``: every override wins, the rest is the file's."""
    opts = server_options(load_config_file(DATA / "full.yaml", env={}))
    server = gqm.Server(
        **{
            **opts.kwargs,
            "global_timeout": 60,
            "scheduler": True,
            "redis": "redis://other:6379/0",
            "handle_signals": False,
        }
    )
    assert server.global_timeout == 60  # override
    assert server.scheduler is True  # override (the file says false)
    assert server.lease_ttl == 15  # file
    assert server.completed_ttl_ms == -1  # file: result_ttl -1 keeps for ever
    assert server.dead_ttl_ms == 0  # file: failure_ttl 0
    assert server.poll_interval == 2  # file
    settings = server._conn._settings
    assert settings.url == "redis://other:6379/0"
    assert settings.password is None  # the file's password went with its URL
    for pool in opts.pools:
        server.pool(pool)
    for entry in opts.cron:
        server.schedule(entry)


def test_defaults_give_the_server_defaults() -> None:
    """An empty config gives the same settings as ``gqm.Server()`` with no arguments."""
    from_file = gqm.Server(**server_options(load("")).kwargs)
    plain = gqm.Server()
    for name in (
        "lease_ttl",
        "max_recoveries",
        "grace_period",
        "global_timeout",
        "completed_ttl_ms",
        "dead_ttl_ms",
        "poll_interval",
        "scheduler",
        "misfire_grace",
    ):
        assert getattr(from_file, name) == getattr(plain, name), name


def test_api_config_defaults_are_safe() -> None:
    """The API is off by default; rate limiting is on."""
    api = ApiConfig()
    assert api.enabled is False
    assert api.rate_limit == 100
    assert api.trusted_proxies == []


def test_monitoring_section_turns_the_api_on() -> None:
    """``monitoring.api`` reaches the server as gqm_web settings: users only when auth is
    enabled, API keys, rate limit, proxies, TLS files; off means no API at all."""
    import gqm_web

    hashed = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
    cfg = load(
        f"""
        monitoring:
          auth:
            enabled: true
            session_ttl: 600
            users: [{{username: ann, password_hash: "{hashed}", role: admin}}]
          api:
            enabled: true
            addr: "0.0.0.0:9090"
            rate_limit: 7
            trusted_proxies: ["10.0.0.0/8"]
            api_keys: [{{name: ci, key: "{"k" * 40}", role: viewer}}]
        """
    )
    api = cfgmod.server_options(cfg).kwargs["api"]
    assert isinstance(api, gqm_web.WebSettings)
    assert (api.addr, api.session_ttl, api.rate_limit) == ("0.0.0.0:9090", 600, 7)
    assert [(u.username, u.role) for u in api.users] == [("ann", "admin")]
    assert [(k.name, k.role) for k in api.api_keys] == [("ci", "viewer")]
    assert api.trusted_proxies == ("10.0.0.0/8",)
    assert "api" not in cfgmod.server_options(load("monitoring: {}")).kwargs
