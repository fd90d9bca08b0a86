# pyright: basic
"""The CLI's one vocabulary: options shared by every command, and old spellings kept working.

``--model/-m BUNDLE`` the bundle (default: the model shipped with edgekit), ``-o/--out`` what a
command writes, ``--data-root`` where a split's images are now, ``--part`` a part of a split,
``--batch-size`` images per inference call, ``--allow-unsigned`` an unsigned bundle. Light: click only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click


class _Finite:
    """Mixed into click's float types: nan and inf are refused (nan compares false, so it would pass
    every range)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)  # pyright: ignore[reportAttributeAccessIssue]
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)  # pyright: ignore[reportAttributeAccessIssue]
        return rv


class FiniteFloat(_Finite, click.types.FloatParamType):
    """A float option that refuses nan and inf."""


class FiniteFloatRange(_Finite, click.FloatRange):
    """``click.FloatRange`` that refuses nan and inf."""


FINITE_FLOAT = FiniteFloat()
MAX_THREADS = 64  # inference threads a command accepts (more only thrash, or never start)


class AliasedOption(click.Option):
    """An option whose ``aliases`` (old spellings) still work but are not shown in ``--help``."""

    def __init__(self, *args: Any, aliases: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aliases = set(aliases)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        shown = self.opts
        self.opts = [o for o in shown if o not in self.aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


def option(*decls: str, aliases: tuple[str, ...] = (), **kwargs: Any):
    """``click.option`` with hidden old spellings (``aliases``)."""
    return click.option(*decls, *aliases, cls=AliasedOption, aliases=aliases, **kwargs)


def model_option(help_text: str = "Bundle folder (from `edgekit model export`). Default: the model shipped "
                 "with edgekit."):
    return click.option("--model", "-m", "bundle", type=click.Path(path_type=Path), default=None,
                        help=help_text)


def allow_unsigned_option():
    """``--allow-unsigned``: run a bundle no trusted key signed (also ``$EDGEKIT_ALLOW_UNSIGNED=1``)."""
    return click.option(
        "--allow-unsigned", is_flag=True, envvar="EDGEKIT_ALLOW_UNSIGNED",
        help="Run a bundle not signed by a trusted key (development only; also $EDGEKIT_ALLOW_UNSIGNED=1).",
    )


def data_root_option():
    return option("--data-root", "data_root", aliases=("--data",), type=click.Path(path_type=Path),
                  help="Where the split's images are now, if they moved since the split file was written.")


def part_option(default: str = "test"):
    return option("--part", "part", aliases=("--split",), default=default, show_default=True,
                  type=click.Choice(["train", "val", "test"]), help="Which part of the split.")


class FormatNames(click.ParamType):
    """Model format names checked against the format table: ``tflite_int8,onnx_fp32`` or ``all`` for a
    list, one name for ``single``. An unknown name is a usage error (one line, exit 2)."""

    def __init__(self, choices: tuple[Any, ...] | None = None, single: bool = False) -> None:
        from edgekit import formats

        self.choices = formats.EXPORT_FORMATS if choices is None else choices
        self.single = single
        self.name = "format" if single else "formats"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from edgekit import formats

        if not isinstance(value, str):
            return value
        if self.single:
            if value not in {f.name for f in self.choices}:
                self.fail(f"unknown format {value!r}; choose from {formats.names(self.choices)}", param, ctx)
            return value
        try:
            return formats.parse(value, self.choices)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def model_format_option():
    """``--model-format``: which model of the bundle the device runs (a name from the format table)."""
    from edgekit import formats

    device = tuple(formats.BY_NAME[name] for name in formats.DEVICE_ORDER)
    return click.option(
        "--model-format", type=FormatNames(device, single=True), default=None,
        help=f"Which model of the bundle to run ({formats.names(device)}). Default: the first usable one,"
             " in that order.",
    )


# Every output a command can print, by its one --format name.
OUTPUT_FORMATS = {
    "text": "readable lines", "table": "a table", "json": "one JSON document",
    "jsonl": "one JSON object a line", "csv": "CSV with a header row", "html": "an HTML page",
}
_OLD_FORMAT_FLAG = "edgekit.old_format_flag"  # ctx.meta key: the format an old flag (--json) asked for


def format_option(*choices: str, default: str, old_flags: dict[str, str] | None = None, help_text: str = ""):
    """``--format``: what a command prints, one of ``choices`` (names from :data:`OUTPUT_FORMATS`).
    ``old_flags`` (``{"--json": "json"}``) keep the old flag spellings working, unlisted."""
    unknown = set(choices) - set(OUTPUT_FORMATS)
    if unknown or default not in choices:
        raise ValueError(f"output formats {sorted(unknown)} or default {default!r} not in OUTPUT_FORMATS")

    def remember(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            ctx.meta[_OLD_FORMAT_FLAG] = (old_flags or {})[param.opts[0]]

    def resolve(ctx: click.Context, param: click.Parameter, value: str) -> str:
        return ctx.meta.pop(_OLD_FORMAT_FLAG, None) or value  # an old flag wins, as it always did

    def decorate(f: Any) -> Any:
        f = click.option("--format", "out_format", type=click.Choice(choices), default=default,
                         show_default=True, callback=resolve,
                         help=help_text or "What to print: " + "; ".join(
                             f"{c}: {OUTPUT_FORMATS[c]}" for c in choices) + ".")(f)
        for flag in old_flags or {}:
            f = click.option(flag, is_flag=True, hidden=True, expose_value=False, is_eager=True,
                             callback=remember)(f)
        return f

    return decorate


def bundle_from(positional: Path | None, model: Path | None) -> Path | None:
    """One bundle from a positional BUNDLE or ``--model`` (either spelling; both must agree)."""
    if positional is not None and model is not None and Path(positional) != Path(model):
        raise click.UsageError(f"two bundles given: {positional} and --model {model}")
    return positional if positional is not None else model


sign_key_option = click.option(
    "--sign-key", type=click.Path(path_type=Path), envvar="EDGEKIT_SIGNING_KEY", default=None,
    help="Sign the bundle with this private key (from `edgekit trust keygen`). "
         "Default: $EDGEKIT_SIGNING_KEY; unsigned when neither is set.",
)


def sign_note(folder: Path, key: Path | None, source: tuple[str | None, list[str]] = (None, []),
              resign_reason: str | None = None) -> str:
    """Sign ``folder`` when a key is configured; the note to print after the summary."""
    from edgekit.signing import sign_if_configured

    was, problems = source
    done = sign_if_configured(folder, key, resign_reason, problems)
    if done is None:
        return ", unsigned (no --sign-key / $EDGEKIT_SIGNING_KEY)"
    note = f"; source {was}" if was else ""
    if problems:
        note += f"; signed UNVERIFIED ({resign_reason}): {'; '.join(problems)}"
    return f", signed with key {done.key_id}, release {done.release}{note}"


# the extra that installs each optional module a command may need (``pip install 'edgekit[EXTRA]'``)
EXTRA_OF_MODULE = {
    "tensorflow": "train", "keras": "train", "sklearn": "train", "matplotlib": "train",
    "tf2onnx": "export", "onnx": "export",
    "ai_edge_litert": "device", "tflite_runtime": "device", "onnxruntime": "device",
    "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "pydicom": "dicom", "psycopg": "sync",
}


def missing_module_line(command: str, module: str, extra: str | None = None) -> str:
    """One line naming what ``command`` needs and the extra that installs it."""
    top = module.split(".")[0]
    extra = extra or EXTRA_OF_MODULE.get(top)
    if extra is None:
        return f"edgekit {command} needs the Python module {top}, which is not installed"
    return (f"edgekit {command} needs the {extra} extra ({top} is not installed): "
            f"pip install 'edgekit[{extra}]'")


def require_modules(command: str, extra: str, *modules: str) -> None:
    """Before any work: stop with one line when a module ``command`` needs is not installed (checked
    without importing it: TensorFlow takes seconds to import)."""
    import importlib.util

    from edgekit.errors import EdgekitError

    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module set to None
            found = False
        if not found:
            raise EdgekitError(missing_module_line(command, module, extra))


def labels_value(value: str) -> list[str]:
    """``--labels``: comma-separated names, or a labels.txt file (one name a line; a regular file of at
    most 1 MB, read through the same bounded reader as every file argument)."""
    from edgekit.safefile import is_regular, read_text_argument

    path = Path(value)
    if is_regular(path) or (path.suffix == ".txt" and path.exists()):
        text = read_text_argument(path, 1 << 20, "labels file")
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    else:
        names = [v.strip() for v in value.split(",") if v.strip()]
    bad = next((n for n in names if not n.isprintable()), None)
    if bad is not None:  # the manifest refuses it on loading: the bundle would never run
        raise click.BadParameter(f"label {bad!r} is not one printable line", param_hint="--labels")
    return names
