"""Config file commands: init, check, set-password, add-api-key, revoke-api-key,
hash-password and generate-api-key.

Commands that change a config file edit it in place, keep its comments where the edit
allows (see :mod:`._yaml_edit`), validate the result with the config loader before
writing (an invalid result is never written) and write it atomically with mode 0600:
it holds password hashes and API keys.
"""

from __future__ import annotations

import getpass
import os
import secrets
import sys
import tempfile
from typing import TYPE_CHECKING, Any

import yaml

from ._output import OK, USAGE, CliError, confirm, error
from ._yaml_edit import ConfigEditor

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from gqm.config import ConfigError

#: Where the config keeps dashboard users and API keys (as the original's gqm.yaml).
AUTH_ENABLED: list[str | int] = ["monitoring", "auth", "enabled"]
USERS: list[str | int] = ["monitoring", "auth", "users"]
API_KEYS: list[str | int] = ["monitoring", "api", "api_keys"]
ROLES = ("admin", "viewer")
API_KEY_PREFIX = "gqm_ak_"
DEFAULT_CONFIG = "gqm.yaml"
RESTART = "restart the gqm server for the change to take effect"

_EDIT_NOTE = (
    "The file is edited in place and keeps its comments; a layout the edit cannot follow "
    "(a non-empty flow-style list such as [a, b], duplicate keys) is rewritten from its "
    "data instead, without comments (a note says so). A change that would make the file "
    "invalid is refused; it is written with mode 0600."
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "init",
        help="write a template config file (mode 0600)",
        description="Write a commented template config file, readable only by you (0600).",
    )
    p.add_argument("path", nargs="?", default=DEFAULT_CONFIG, help="default: %(default)s")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_init)

    p = commands.add_parser(
        "check",
        help="validate a config file and print every problem",
        description="Validate a config file; every problem is printed (exit code 2).",
    )
    p.add_argument("path", help="the config file")
    p.set_defaults(func=cmd_check)

    p = commands.add_parser(
        "set-password",
        aliases=["reset-password"],
        help="set a dashboard user's password in the config file",
        description="Set or update a dashboard user's password (an argon2id hash) and "
        "enable auth. The password is read from the terminal (asked twice) or, when "
        "stdin is not a terminal, from its first line. " + _EDIT_NOTE,
    )
    p.add_argument("user", help="the user name (added if missing)")
    _config_option(p)
    p.add_argument(
        "--role", choices=ROLES, default="admin", help="role of a new user (default: admin)"
    )
    p.set_defaults(func=cmd_set_password)

    p = commands.add_parser(
        "add-api-key",
        help="generate an API key and add it to the config file",
        description="Generate an API key, add it to the config file under "
        "monitoring.api.api_keys and print it. " + _EDIT_NOTE,
    )
    p.add_argument("name", help="a unique name for the key")
    _config_option(p)
    p.add_argument("--role", choices=ROLES, default="viewer", help="default: %(default)s")
    p.set_defaults(func=cmd_add_api_key)

    p = commands.add_parser(
        "revoke-api-key",
        help="remove an API key from the config file",
        description="Remove an API key from the config file. Asks for confirmation on a "
        "terminal; otherwise --yes is required. " + _EDIT_NOTE,
    )
    p.add_argument("name", help="the key's name")
    _config_option(p)
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_revoke_api_key)

    p = commands.add_parser(
        "hash-password",
        help="print the argon2id hash of a password",
        description="Print the argon2id hash of a password, for monitoring.auth.users in "
        "the config. The password is read from the terminal (asked twice) or, when stdin "
        "is not a terminal, from its first line.",
    )
    p.set_defaults(func=cmd_hash_password)

    p = commands.add_parser(
        "generate-api-key",
        help="print a new random API key",
        description=f"Print a new API key: {API_KEY_PREFIX} and 32 random bytes (URL-safe base64).",
    )
    p.set_defaults(func=cmd_generate_api_key)


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help="the config file (default: %(default)s)"
    )


# -- the commands --------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from gqm.config import TEMPLATE

    path: str = args.path
    if args.force:
        write_private(path, TEMPLATE)
    else:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise CliError(f"{path} already exists (use --force to overwrite it)") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(TEMPLATE)
    print(f"wrote {path} (mode 0600); edit it, then check it with: gqm check {path}")
    return OK


def cmd_check(args: argparse.Namespace) -> int:
    from gqm.config import ConfigError, load_config_file

    path: str = args.path
    try:
        load_config_file(path)
    except ConfigError as err:
        print_problems(err)
        return USAGE
    print(f"{path}: OK")
    return OK


def cmd_set_password(args: argparse.Namespace) -> int:
    user: str = args.user
    if not user.strip():
        raise CliError("the user name must not be empty", USAGE)
    password_hash = hash_password(read_password())

    def change(editor: ConfigEditor) -> None:
        editor.set(AUTH_ENABLED, True)
        index = _find(editor.items(USERS), "username", user)
        if index is None:
            editor.append(
                USERS, {"username": user, "password_hash": password_hash, "role": args.role}
            )
        else:
            editor.set([*USERS, index, "password_hash"], password_hash)

    edit_config(args.config, change)
    print(f"password set for user {user!r} in {args.config}; {RESTART}")
    return OK


def cmd_add_api_key(args: argparse.Namespace) -> int:
    name: str = args.name
    if not name.strip():
        raise CliError("the key name must not be empty", USAGE)
    key = new_api_key()

    def change(editor: ConfigEditor) -> None:
        if _find(editor.items(API_KEYS), "name", name) is not None:
            raise CliError(f"an API key named {name!r} already exists in {args.config}")
        editor.append(API_KEYS, {"name": name, "key": key, "role": args.role})

    edit_config(args.config, change)
    print(key)
    error(f"added API key {name!r} (role {args.role}) to {args.config}; {RESTART}")
    return OK


def cmd_revoke_api_key(args: argparse.Namespace) -> int:
    name: str = args.name

    def change(editor: ConfigEditor) -> None:
        index = _find(editor.items(API_KEYS), "name", name)
        if index is None:
            raise CliError(f"no API key named {name!r} in {args.config}")
        confirm(f"Revoke API key {name}?", yes=args.yes)
        editor.remove(API_KEYS, index)

    edit_config(args.config, change)
    print(f"revoked API key {name!r} in {args.config}; {RESTART}")
    return OK


def cmd_hash_password(args: argparse.Namespace) -> int:
    print(hash_password(read_password()))
    return OK


def cmd_generate_api_key(args: argparse.Namespace) -> int:
    print(new_api_key())
    return OK


# -- helpers -------------------------------------------------------------------------------


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_password(password: str) -> str:
    try:
        from argon2 import PasswordHasher
    except ImportError:
        raise CliError(
            "hashing passwords needs argon2-cffi: pip install 'gqm[web]'", USAGE
        ) from None
    return PasswordHasher().hash(password)


def read_password() -> str:
    """A password from the terminal (asked twice), else the first line of stdin."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat the password: ") != password:
            raise CliError("the passwords do not match", USAGE)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password.strip():
        raise CliError("the password must not be empty", USAGE)
    return password


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise CliError(f"no config file {path} (create one with: gqm init {path})", USAGE) from None
    except (OSError, UnicodeDecodeError) as err:
        raise CliError(f"cannot read {path}: {err}", USAGE) from None


def write_private(path: str, text: str) -> None:
    """Replace ``path`` atomically with a file of mode 0600 (a symlink's target)."""
    target = os.path.realpath(path)
    fd, tmp = tempfile.mkstemp(
        prefix=".gqm-", suffix=".tmp", dir=os.path.dirname(target) or "."
    )  # mkstemp creates the file with mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def edit_config(path: str, change: Callable[[ConfigEditor], None]) -> None:
    """Apply ``change`` to the config file and write it, unless that adds problems.

    A file that already had problems (say, a ``${VAR}`` that is set only where the
    server runs) is still written, with a warning; new problems are refused.
    """
    text = read_text(path)
    try:
        editor = ConfigEditor(text)
    except (yaml.YAMLError, ValueError) as err:
        raise CliError(f"{path}: {_one_line(err)}", USAGE) from None
    try:
        change(editor)
    except ValueError as err:
        raise CliError(f"{path}: {err}", USAGE) from None
    new_text, kept_layout = editor.result()
    before = _problems(text, path)
    after = _problems(new_text, path)
    if after is not None and (before is None or _keys(after) - _keys(before)):
        print_problems(after, f"not writing {path}: the change would make it invalid")
        raise CliError(f"{path} was left unchanged", USAGE)
    write_private(path, new_text)
    if not kept_layout:
        error(f"note: {path} was rewritten from its data; its comments were not kept")
    if after is not None:
        print_problems(after, f"warning: {path} was written, but it still has problems")


def _problems(text: str, path: str) -> ConfigError | None:
    from gqm.config import ConfigError, load_config

    try:
        load_config(text, source=path)
    except ConfigError as err:
        return err
    return None


def _keys(err: ConfigError) -> set[tuple[str, str]]:
    """Problems without their line numbers, which an edit shifts."""
    return {(p.path, p.message) for p in err.problems}


def print_problems(err: ConfigError, header: str | None = None) -> None:
    """Every problem, one per line (``file:line: $.path: message``), to stderr."""
    if header:
        error(header)
    summary, *lines = str(err).splitlines()
    error(summary)
    for line in lines:
        print(f"  {line}", file=sys.stderr)


def _find(items: list[Any], field: str, value: str) -> int | None:
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get(field) == value:
            return index
    return None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
