"""The ``nimbus`` command: a typer app with one module per noun.

Failures never show a traceback: a :class:`NimbusError` (or an OS error, or a usage error)
becomes one line ``error: <message>`` on stderr and the error's exit code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from nimbus.cli import (
    admin,
    automl,
    cluster,
    datasets,
    deploy,
    deployments,
    edge,
    explain,
    jobs,
    login,
    models,
    predict,
    quotas,
    runs,
    server,
    storage,
    studies,
    tokens,
    train,
    ui,
)
from nimbus.cli.common import JsonOption
from nimbus.errors import NimbusError

# The click that typer runs on (vendored in recent typer) is reached through its public
# BadParameter, so usage errors are recognised whichever click it is.
_UsageError: type[Exception] = next(
    cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "UsageError"
)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return typer.Exit(code)


class NimbusGroup(TyperGroup):
    """The root group: turns expected failures of any sub-command into one line on stderr."""

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


app = typer.Typer(
    name="nimbus",
    cls=NimbusGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    help="Nimbus: a self-hosted AI cloud, from training data to a live prediction endpoint.",
)
app.command("server")(server.server)
app.command("login")(login.login)
app.add_typer(tokens.app, name="tokens")
app.add_typer(quotas.app, name="quotas")
app.add_typer(storage.app, name="storage")
app.add_typer(datasets.app, name="datasets")
app.command("train")(train.train)
app.add_typer(jobs.app, name="jobs")
app.command("tune")(studies.tune)
app.add_typer(studies.app, name="studies")
app.add_typer(runs.app, name="runs")
app.command("automl")(automl.automl)
app.add_typer(models.app, name="models")
app.command("deploy")(deploy.deploy)
app.add_typer(deployments.app, name="deployments")
app.command("predict")(predict.predict)
app.command("explain")(explain.explain)
app.command("demo")(demo)
app.command("ui")(ui.ui)
app.command("serve")(edge.serve)
app.add_typer(admin.app, name="admin")
app.add_typer(cluster.app, name="cluster")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``nimbus = nimbus.cli.app:main``)."""
    app(args=list(argv) if argv is not None else None, prog_name="nimbus")
