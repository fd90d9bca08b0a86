# pyright: basic
"""The one ``edgekit`` command. Subcommand modules are light (click only) and import their heavy
work inside the command body, so ``edgekit classify`` on a Pi never loads TensorFlow."""

from __future__ import annotations

import errno
import importlib
import os
import sys
from typing import Any

import click

from edgekit import __version__
from edgekit.errors import EdgekitError
from edgekit.startup import dispatched

# Where each command lives, as (module, attribute), in the order `--help` lists them. Each module owns its
# commands so features stay independent; a module is imported only when one of its commands is invoked or
# listed (`edgekit classify` on a Pi imports the device commands only: cold start).
FIELD: dict[str, tuple[str, str]] = {  # the field worker's verbs, at the top
    "classify": ("edgekit.device.commands", "classify"),
    "field": ("edgekit.device.field_commands", "field"),
    "screen": ("edgekit.device.commands", "screen"),
    "camera": ("edgekit.device.commands", "camera"),
    "sessions": ("edgekit.device.commands", "sessions"),
    "serve": ("edgekit.device.serve.commands", "serve"),
    "sync": ("edgekit.programme.commands", "sync"),
}
MODEL: dict[str, tuple[str, str]] = {
    "split": ("edgekit.commands", "split"),
    "train": ("edgekit.commands", "train"),
    "evaluate": ("edgekit.commands", "evaluate"),
    "export": ("edgekit.export.commands", "export"),
    "pack": ("edgekit.export.commands", "pack"),
    "import": ("edgekit.export.import_command", "import"),
    "info": ("edgekit.commands", "info"),
    "bench": ("edgekit.benchmarks.commands", "bench"),
}
SITE: dict[str, tuple[str, str]] = {
    "cells": ("edgekit.site_commands", "cells"),
    "adapt": ("edgekit.site_commands", "adapt"),
    "domain": ("edgekit.domain_commands", "domain"),
    "check": ("edgekit.site_commands", "site_check"),
}
TRUST: dict[str, tuple[str, str]] = {
    "keygen": ("edgekit.trust_commands", "keygen"),
    "sign": ("edgekit.trust_commands", "sign"),
    "verify": ("edgekit.trust_commands", "verify"),
}
PROGRAMME: dict[str, tuple[str, str]] = {"programme": ("edgekit.programme.commands", "programme")}
GROUPS = ("model", "site", "trust", "programme")

# Old top-level spellings (`edgekit train`): still accepted with the same behaviour, not listed in --help.
OLD_SPELLINGS: dict[str, tuple[str, str]] = {
    **{name: ("model", name) for name in MODEL},
    **{name: ("site", name) for name in ("cells", "adapt", "domain")},
    **{name: ("trust", name) for name in TRUST},
}


def _single_thread_blas() -> None:
    """The device path does no linear algebra worth a thread pool (a 9x9 Mahalanobis product), but
    OpenBLAS starts one per core when numpy is imported: ~50 ms of CPU and of a cold start on 2 cores.
    Only before numpy's import, and never over the user's own setting."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


class LazyGroup(click.Group):
    """A group whose commands are imported on first use, from ``lazy`` (name -> (module, attribute))."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.lazy, *(name for name in self.commands if name not in self.lazy)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module, attribute = self.lazy[cmd_name]
            if module.startswith("edgekit.device."):
                _single_thread_blas()
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        command = self.commands.get(cmd_name)
        dispatched(command)
        return command

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                             list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        ctx.meta.setdefault(_INVOKED, []).append(name or "")  # for the missing-extra line
        return name, cmd, rest


_INVOKED = "edgekit.invoked"  # ctx.meta key: the command names as typed, group first


class EdgekitGroup(LazyGroup):
    """Turns user errors into one clear line and a non-zero exit, never a traceback, for every command
    and group below it. Old top-level spellings resolve to their command in a group, unlisted."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*FIELD, *GROUPS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in OLD_SPELLINGS and cmd_name not in self.lazy:
            group, name = OLD_SPELLINGS[cmd_name]
            parent = super().get_command(ctx, group)
            return parent.get_command(ctx, name) if isinstance(parent, click.Group) else None
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.NoArgsIsHelpError as exc:  # a group alone: its help, as `edgekit` alone
            click.echo(exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:  # bad options or arguments: one line too, not click's usage block
            name = f"{exc.ctx.command_path} " if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message()} (see `{name.strip() or 'edgekit'} --help`)", err=True)
            sys.exit(exc.exit_code)
        except ModuleNotFoundError as exc:  # an optional extra missing: name it, never a traceback
            from edgekit.cli_options import missing_module_line

            command = " ".join(ctx.meta.get(_INVOKED, [])) or "edgekit"
            click.echo(f"error: {missing_module_line(command, exc.name or '?')}", err=True)
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


@click.group(cls=EdgekitGroup, lazy={**FIELD, **PROGRAMME},
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
def main() -> None:
    """Screen blood smears on field devices; train, adapt and sign the models they run.

    The verbs at the top are the field worker's; `model`, `site` and `trust` hold the commands of
    whoever builds, adapts and signs the models.
    """


@main.group(cls=LazyGroup, lazy=MODEL)
def model() -> None:
    """Train, evaluate, export, package and measure models."""


@main.group(cls=LazyGroup, lazy=SITE)
def site() -> None:
    """Adapt a model to another microscope; check that it holds."""


@main.group(cls=LazyGroup, lazy=TRUST)
def trust() -> None:
    """Keys and signed bundles: which models a device trusts."""
