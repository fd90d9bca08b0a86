# pyright: basic
"""The one ``edgekit`` command. Subcommand modules are light (click only) and import their heavy
work inside the command body, so ``edgekit classify`` on a Pi never loads TensorFlow."""

from __future__ import annotations

import errno
import importlib
import os
import sys

import click

from edgekit import __version__
from edgekit.errors import EdgekitError

# (module, command attribute); each module owns its commands so features stay independent.
COMMANDS = [
    ("edgekit.commands", "split"),
    ("edgekit.commands", "train"),
    ("edgekit.commands", "evaluate"),
    ("edgekit.commands", "info"),
    ("edgekit.trust_commands", "keygen"),
    ("edgekit.trust_commands", "sign"),
    ("edgekit.trust_commands", "verify"),
    ("edgekit.export.commands", "export"),
    ("edgekit.export.commands", "pack"),
    ("edgekit.export.import_command", "import"),
    ("edgekit.device.commands", "classify"),
    ("edgekit.device.commands", "camera"),
    ("edgekit.device.commands", "screen"),
    ("edgekit.device.commands", "sessions"),
    ("edgekit.device.field_commands", "field"),
    ("edgekit.device.serve.commands", "serve"),
    ("edgekit.benchmarks.commands", "bench"),
    ("edgekit.site_commands", "cells"),
    ("edgekit.site_commands", "adapt"),
    ("edgekit.site_commands", "site"),
    ("edgekit.domain_commands", "domain"),
    ("edgekit.programme.commands", "sync"),
    ("edgekit.programme.commands", "programme"),
]


def _single_thread_blas() -> None:
    """The device path does no linear algebra worth a thread pool (a 9x9 Mahalanobis product), but
    OpenBLAS starts one per core when numpy is imported: ~50 ms of CPU and of a cold start on 2 cores.
    Only before numpy's import, and never over the user's own setting."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


class EdgekitGroup(click.Group):
    """Turns user errors into one clear line and a non-zero exit, never a traceback. Subcommands
    load lazily: ``edgekit classify`` imports only its own module (cold start)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *(name for _, name in COMMANDS)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            for module, name in COMMANDS:
                if name == cmd_name:
                    if module.startswith("edgekit.device."):
                        _single_thread_blas()
                    self.add_command(getattr(importlib.import_module(module), name), name)
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:  # bad options or arguments: one line too, not click's usage block
            name = f"{exc.ctx.command_path} " if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message()} (see `{name.strip() or 'edgekit'} --help`)", err=True)
            sys.exit(exc.exit_code)
        except ModuleNotFoundError as exc:  # an optional extra missing: name it, never a traceback
            from edgekit.cli_options import missing_module_line

            click.echo(f"error: {missing_module_line(ctx.invoked_subcommand or 'edgekit', exc.name or '?')}",
                       err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except MemoryError:
            click.echo("error: out of memory", err=True)
            sys.exit(3)
        except OSError as exc:  # mostly output: a full disk, `| head` closing the pipe, a dead terminal
            _drop_stdout()
            if exc.errno == errno.EPIPE:
                click.echo("error: output closed early (broken pipe)", err=True)
                sys.exit(141)
            if exc.filename is None and exc.errno in _OUTPUT_ERRNOS:
                click.echo(f"error: cannot write output: {exc.strerror}", err=True)
            else:
                where = f": {exc.filename}" if exc.filename else ""
                click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            sys.exit(2)


_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EBADF}


def _drop_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail a second time."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):
        pass


@click.group(cls=EdgekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
def main() -> None:
    """Train, quantize and run compact image classifiers on field devices."""

