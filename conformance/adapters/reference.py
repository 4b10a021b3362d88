"""The bundled ``refimpl`` adapter: the reference implementations themselves.

Certifying it must pass every check: it is the fixed point the other adapters are measured
against, and a regression in a check or in refimpl shows up here first.
"""

import refimpl


class RefimplAdapter:
    name = "refimpl"
    framework = {"rlconform": refimpl.__version__}
    shims: dict = {}
    known_deviations: dict = {}


for _name in refimpl.CANONICAL + ("train_step", "train_run"):
    setattr(RefimplAdapter, _name, staticmethod(getattr(refimpl, _name)))

adapter = RefimplAdapter()
