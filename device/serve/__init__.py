# pyright: basic
"""``edgekit serve``: a screening station any phone on the clinic's network can use.

One process serves a small mobile page and a JSON API on top of the device pipeline (the same
cell finding, preprocessing, decisions and screening records as the command line). The command
module is light (click only); FastAPI and uvicorn load when the server starts (the ``serve`` extra).
"""
