# pyright: basic
"""The CLI's one vocabulary: options shared by every command, and old spellings kept working.

``--model/-m BUNDLE`` the bundle (default: the model shipped with edgekit), ``-o/--out`` what a
command writes, ``--data-root`` where a split's images are now, ``--part`` a part of a split,
``--batch-size`` images per inference call, ``--allow-unsigned`` an unsigned bundle. Light: click only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


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


def model_option(help_text: str = "Bundle folder (from `edgekit export`). Default: the model shipped with "
                 "edgekit."):
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


def bundle_from(positional: Path | None, model: Path | None) -> Path | None:
    """One bundle from a positional BUNDLE or ``--model`` (either spelling; both must agree)."""
    if positional is not None and model is not None and Path(positional) != Path(model):
        raise click.UsageError(f"two bundles given: {positional} and --model {model}")
    return positional if positional is not None else model


sign_key_option = click.option(
    "--sign-key", type=click.Path(path_type=Path), envvar="EDGEKIT_SIGNING_KEY", default=None,
    help="Sign the bundle with this private key (from `edgekit keygen`). Default: $EDGEKIT_SIGNING_KEY; "
         "unsigned when neither is set.",
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
        return [ln.strip() for ln in text.splitlines() if ln.strip()]
    return [v.strip() for v in value.split(",") if v.strip()]
