# pyright: basic
"""The ``edgekit`` script and ``python -m edgekit``: Ctrl-C while the CLI is still loading (a few
tenths of a second on a small board) is one line and exit 130 too, not a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    """Load the CLI, then run it."""
    from edgekit.device.native_stderr import serialise_python_stderr
    from edgekit.startup import hold, release
    from edgekit.std_descriptors import claim_closed

    claim_closed()  # `>&-`: a result must fail to write, not vanish; no file opened may become fd 1 or 2
    serialise_python_stderr()  # before any thread borrows descriptor 2 (a decoding thread's warnings)
    hold()  # the collector waits until the command has loaded what it runs (cold start)
    try:
        try:
            from edgekit.cli import main as cli
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise SystemExit(130) from None
        cli()
    finally:
        release(freeze=False)  # a caller in the same process (a test) gets its collector back
