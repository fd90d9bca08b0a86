# pyright: basic
"""``python -m edgekit`` runs the CLI (the same as the ``edgekit`` script)."""

from edgekit.entry import main

main()
