"""``rlconform setup FRAMEWORK``: install a bundled framework into the current environment the
right way for a CPU machine.

Where a plain pip install works, it installs the pinned release (the same pins as the project's
optional extra, ``pip install -e ".[trl]"``); where the full install cannot work here (OpenRLHF
needs flash-attn and nvcc) or pulls far more than the math needs (verl), it runs the scripted
minimal install shipped beside the adapter. torch must already be installed (the CPU build
first, see the README): every step keeps it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ADAPTERS = Path(__file__).parent / "adapters"

#: framework -> ("pip", [requirements]) or ("script", file name under conformance/adapters/)
FRAMEWORKS: dict[str, tuple[str, object]] = {
    "trl": ("pip", ["trl==1.16.0"]),
    "torchrl": ("pip", ["torchrl==0.14.1"]),
    "liger": ("pip", ["liger-kernel==0.8.5"]),
    "skyrl": ("script", "skyrl_install.sh"),
    "verl": ("script", "verl_install.sh"),
    "openrlhf": ("script", "openrlhf_install.sh"),
}


def setup(framework: str, dry_run: bool = False) -> int:
    if framework not in FRAMEWORKS:
        print(f"rlconform: unknown framework {framework!r}; bundled: {', '.join(FRAMEWORKS)}",
              file=sys.stderr)
        return 2
    how, what = FRAMEWORKS[framework]
    if how == "pip":
        cmd = [sys.executable, "-m", "pip", "install", *what]
    else:
        cmd = ["bash", str(ADAPTERS / what), sys.executable]
    print("rlconform setup:", " ".join(cmd))
    if dry_run:
        return 0
    return subprocess.call(cmd)
