# pyright: basic
"""A user-typed ``--groups regex:PATTERN`` run over file names with a time limit.

Python's ``re`` backtracks: ``(a+)+$`` on a long name of ``a``s takes hours, and a running
match cannot be stopped from inside its own process. The pattern is compiled and run in a
child Python that is killed at the limit, so no pattern can hang a command; the matching itself
is the stdlib's, exactly as before.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

from edgekit.errors import DataError

# The child's whole run may take this long plus PER_NAME_SECONDS per name: an ordinary pattern
# needs microseconds per file name, so both leave a slow device a hundredfold margin.
BASE_SECONDS = 10.0
PER_NAME_SECONDS = 0.001

_CHILD = r"""
import json, re, sys
job = json.load(sys.stdin)
try:
    pattern = re.compile(job["pattern"])
except re.error as exc:
    json.dump({"error": str(exc)}, sys.stdout)
    sys.exit(0)
groups = []
for i, name in enumerate(job["names"]):
    m = pattern.search(name)
    group = None if not m else m.group(1) if m.groups() else m.group(0)
    if group is None:
        json.dump({"miss": i, "matched": bool(m)}, sys.stdout)
        sys.exit(0)
    groups.append(group)
json.dump({"groups": groups}, sys.stdout)
"""


def regex_groups(pattern: str, names: Sequence[str], limit_s: float | None = None) -> list:
    """Each name's group: ``pattern``'s first capture group, else its whole match.

    :class:`DataError` in one line naming the pattern when it is invalid, matches no group in a
    name, or runs past the time limit (default ``BASE_SECONDS + PER_NAME_SECONDS`` per name).
    """
    limit = BASE_SECONDS + PER_NAME_SECONDS * len(names) if limit_s is None else limit_s
    job = json.dumps({"pattern": pattern, "names": list(names)})
    try:
        # -I -S: the stdlib alone, no site packages or user paths, so it starts in milliseconds
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _CHILD], input=job, capture_output=True,
                              text=True, encoding="utf-8", errors="surrogateescape", timeout=limit)
    except subprocess.TimeoutExpired:
        raise DataError(f"group regex {pattern!r} is too slow: over {limit:.0f} s on {len(names)} "
                        f"file name(s) (nested repeats such as (a+)+ backtrack without end); "
                        f"simplify it") from None
    except OSError as exc:
        raise DataError(f"cannot run group regex {pattern!r}: {exc}") from None
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise DataError(f"group regex {pattern!r} failed: {why}") from None
    if "error" in answer:
        raise DataError(f"bad group regex {pattern!r}: {answer['error']}")
    if "miss" in answer:
        name = names[answer["miss"]]
        if answer["matched"]:  # ``(x)?c``: a match whose first group took no part in it
            raise DataError(f"group regex {pattern!r} matches {name!r} without its first group: no group id")
        raise DataError(f"group regex {pattern!r} does not match {name!r}")
    return answer["groups"]
