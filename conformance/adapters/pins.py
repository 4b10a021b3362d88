"""The one source of each bundled framework's pinned version, and of how it is installed.

Every bundled adapter reads its version from here (its ``framework`` declaration and the
version in its citations, ``support.cite``); the install scripts beside the adapters read it
(``python -c 'from conformance.adapters.pins import PINS; print(PINS["verl"])'``) unless
they are given a version; ``pyproject.toml``'s optional extras pin the same versions
(tests/test_adapter_declarations.py checks it). Framework-free: imports nothing.
"""

from __future__ import annotations

#: framework (the name of its adapter module and of ``rlconform setup``) -> pinned version
PINS: dict[str, str] = {
    "trl": "1.16.0",
    "verl": "0.9.1",
    "openrlhf": "0.11.2",
    "torchrl": "0.14.1",
    "liger": "0.8.5",
    "skyrl": "0.3.1",
}

#: framework -> its distribution on PyPI (the name in citations: "liger-kernel 0.8.5")
DISTRIBUTIONS: dict[str, str] = {
    "trl": "trl",
    "verl": "verl",
    "openrlhf": "openrlhf",
    "torchrl": "torchrl",
    "liger": "liger-kernel",
    "skyrl": "skyrl-train",
}

#: framework -> further distributions an adapter declares in ``framework`` (version specifiers)
COMPANIONS: dict[str, dict[str, str]] = {
    "torchrl": {"tensordict": ">=0.14,<0.15"},
}

#: framework -> the pip requirements of its minimal install beyond the framework itself, which
#: goes in with ``--no-deps`` (the install scripts read these too)
SCRIPT_REQUIREMENTS: dict[str, list[str]] = {
    "verl": ["numpy", "packaging", "ray", "tensordict==0.10.0", "omegaconf", "codetiming",
             "orjson", "transformers>=5.5.3,<5.11",
             # what verl's trainer path imports (train_step: RayPPOTrainer, the engine workers)
             "peft", "torchdata", "datasets", "uvicorn", "fastapi", "cachetools"],
    "skyrl": ["ray==2.51.1", "loguru==0.7.3", "omegaconf==2.4.0", "jaxtyping==0.3.11"],
    "openrlhf": [],
}

#: framework -> how ``rlconform setup`` installs it: ("pip", [requirements]) where a plain pip
#: install works, or ("script", file name under conformance/adapters/); a script takes the
#: Python to install into and, optionally, the version (default: PINS)
SETUP: dict[str, tuple[str, object]] = {
    "trl": ("pip", [f"trl=={PINS['trl']}"]),
    "torchrl": ("pip", [f"torchrl=={PINS['torchrl']}"]),
    "liger": ("pip", [f"liger-kernel=={PINS['liger']}"]),
    "skyrl": ("script", "skyrl_install.sh"),
    "verl": ("script", "verl_install.sh"),
    "openrlhf": ("script", "openrlhf_install.sh"),
}


def requirement(framework: str, version: str | None = None) -> str:
    """The pip requirement of ``framework`` at its pin (or at ``version``): ``verl==0.9.1``."""
    return f"{DISTRIBUTIONS[framework]}=={version or PINS[framework]}"


def framework(name: str) -> dict[str, str]:
    """An adapter's ``framework`` declaration: ``{"trl": "==1.16.0"}`` (plus companions)."""
    return {DISTRIBUTIONS[name]: f"=={PINS[name]}", **COMPANIONS.get(name, {})}


def label(name: str) -> str:
    """How citations name the pinned framework: ``"liger-kernel 0.8.5"``."""
    return f"{DISTRIBUTIONS[name]} {PINS[name]}"


if __name__ == "__main__":       # for the install scripts: pins.py FRAMEWORK [requirement|deps]
    import sys
    fw, what = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "version")
    print({"version": PINS[fw], "requirement": requirement(fw),
           "deps": " ".join(SCRIPT_REQUIREMENTS.get(fw, []))}[what])
