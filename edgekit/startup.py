# pyright: basic
"""Python's cyclic garbage collector held off while ``edgekit`` starts.

Starting a device command creates ~100,000 objects that live as long as the process (click,
numpy's, OpenCV's and LiteRT's bindings, edgekit's own modules and the bundle), and the collector
walks them again each time a few hundred more arrive: 4-5 collections of the older generation,
~5 ms of a ~130 ms cold start (up to ~10 ms with a full collection). So the ``edgekit`` script holds
it (:func:`hold`) until the command has loaded what it runs: a command marked
:func:`loads_model` until its model is loaded (:func:`edgekit.device.runtime.load_classifier` calls
:func:`release`), any other as soon as it is dispatched (:func:`dispatched`). :func:`release` moves
what is alive then into the collector's permanent generation (``gc.freeze``: never walked again)
and turns it back on, so nothing created afterwards waits longer to be collected. Nothing here
does anything unless :func:`hold` was called (a library user's collector is left alone)."""

from __future__ import annotations

import gc
from typing import TypeVar

T = TypeVar("T")

_MARK = "edgekit_loads_model"  # attribute on a click command: keep holding until its model is loaded
_state = {"held": False}


def hold() -> None:
    """Hold the collector off (when it is on), until :func:`release`."""
    if gc.isenabled():
        gc.disable()
        _state["held"] = True


def release(freeze: bool = True) -> None:
    """End a :func:`hold`: freeze what is alive (unless not ``freeze``), turn the collector back on;
    else nothing."""
    if _state["held"]:
        _state["held"] = False
        if freeze:
            gc.freeze()
        gc.enable()


def loads_model(command: T) -> T:
    """Mark a command that always loads a model before its first result (or fails): the collector
    stays held until then."""
    setattr(command, _MARK, True)
    return command


def dispatched(command: object) -> None:
    """A command was chosen: release now unless it is marked :func:`loads_model`."""
    if not getattr(command, _MARK, False):
        release()
