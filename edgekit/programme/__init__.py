# pyright: basic
"""Central records for a screening programme: stations sync into one PostgreSQL (``edgekit sync``),
a reader reports per site and week (``edgekit programme report``). Needs the ``sync`` extra."""
