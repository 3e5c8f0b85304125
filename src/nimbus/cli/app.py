"""The ``nimbus`` command: a typer app with one module per noun.

Failures never show a traceback: a :class:`NimbusError` (or an OS error, or a usage error)
becomes one line ``error: <message>`` on stderr and the error's exit code.

A command's module is imported when that command runs (or when the root help lists it), not
at start: ``nimbus datasets download`` loads the datasets commands and the SDK, not the
other nouns' modules and what they render with (tests/cli/test_start.py keeps it so).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Annotated, Any, cast

import typer
import typer.main
from typer.core import TyperGroup

from nimbus.cli.common import JsonOption
from nimbus.errors import NimbusError
from nimbus.system import exit_now

# Each command and group of the root in the order the help lists them (the commands, then
# the groups, as typer orders them): the module that defines it and its name there (a
# function: a command; a typer.Typer: a group of them).
COMMANDS: dict[str, tuple[str, str]] = {
    "server": ("nimbus.cli.server", "server"),
    "login": ("nimbus.cli.login", "login"),
    "train": ("nimbus.cli.train", "train"),
    "tune": ("nimbus.cli.studies", "tune"),
    "automl": ("nimbus.cli.automl", "automl"),
    "deploy": ("nimbus.cli.deploy", "deploy"),
    "predict": ("nimbus.cli.predict", "predict"),
    "explain": ("nimbus.cli.explain", "explain"),
    "demo": ("nimbus.cli.app", "demo"),
    "ui": ("nimbus.cli.ui", "ui"),
    "serve": ("nimbus.cli.edge", "serve"),
    "tokens": ("nimbus.cli.tokens", "app"),
    "quotas": ("nimbus.cli.quotas", "app"),
    "storage": ("nimbus.cli.storage", "app"),
    "datasets": ("nimbus.cli.datasets", "app"),
    "jobs": ("nimbus.cli.jobs", "app"),
    "studies": ("nimbus.cli.studies", "app"),
    "runs": ("nimbus.cli.runs", "app"),
    "models": ("nimbus.cli.models", "app"),
    "deployments": ("nimbus.cli.deployments", "app"),
    "admin": ("nimbus.cli.admin", "app"),
    "cluster": ("nimbus.cli.cluster", "app"),
}

# The click that typer runs on (vendored in recent typer) is reached through its public
# BadParameter, so usage errors are recognised whichever click it is.
_UsageError: type[Exception] = next(
    cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "UsageError"
)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return typer.Exit(code)


class LazyCommands(MutableMapping[str, Any]):
    """The root's commands by name (:data:`COMMANDS`), each built when first looked up: its
    names are known without importing a module (typer's suggestions for a mistyped command
    read them), its values import one."""

    def __init__(self) -> None:
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in COMMANDS:
                raise KeyError(name)
            self._built[name] = _load(name)
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(COMMANDS), **self._built})

    def __len__(self) -> int:
        return len({*COMMANDS, *self._built})


class NimbusGroup(TyperGroup):
    """The root group: its commands built as they are looked up (:class:`LazyCommands`);
    turns expected failures of any sub-command into one line on stderr."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands()

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # the names, without building every command

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except NimbusError as exc:
            raise _fail(exc.message, exc.exit_code) from None
        except _UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise  # a bare `nimbus datasets` shows the help, as it should
            where = getattr(getattr(exc, "ctx", None), "command_path", "nimbus")
            message = exc.format_message()  # type: ignore[attr-defined]
            raise _fail(f"{message} (see `{where} --help`)", 2) from None
        except OSError as exc:
            raise _fail(str(exc), 1) from None


def demo(
    as_json: JsonOption = False,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="Leave the server running with everything the demo made (the deployment "
            "too), and print a sign-in link to its console.",
        ),
    ] = False,
) -> None:
    """Run the journey on bundled data (scikit-learn's digits, generated support messages)
    against a throwaway server: upload, train, evaluate, compare, register, deploy, predict."""
    # Imported when run: the demo's data and serving steps bring numpy, which no other
    # command's start should pay for.
    from nimbus.cli import demo as journey

    journey.demo(as_json, keep=keep)


def _load(name: str) -> Any:
    """The click command of root command ``name``, built by typer as if it had been added to
    the root app (its module imported now)."""
    module, attribute = COMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    holder = typer.Typer(add_completion=False)
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    holder.callback()(_root)
    return cast(TyperGroup, typer.main.get_command(holder)).commands[name]


def _root() -> None:
    """The root's own step before any command: none (typer needs one for a group whose
    commands are added when they are looked up)."""


app = typer.Typer(
    name="nimbus",
    cls=NimbusGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    help="Nimbus: a self-hosted AI cloud, from training data to a live prediction endpoint.",
)
app.callback()(_root)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``nimbus = nimbus.cli.app:main``). The command done, the
    process ends at once (:func:`nimbus.system.exit_now`), not after the interpreter's
    teardown of every module it imported (~0.3 s of CPU for a command that called the
    server: every command pays it, a short one most)."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="nimbus")
        code = 0
    except SystemExit as done:  # how click ends every command, failed or not
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:
            print(done.code, file=sys.stderr)
            code = 1
    exit_now(code)
