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

from conformance.adapters.pins import PINS, SETUP

ADAPTERS = Path(__file__).parent / "adapters"

#: framework -> ("pip", [requirements]) or ("script", file name under conformance/adapters/),
#: from the one source of the pinned versions
FRAMEWORKS: dict[str, tuple[str, object]] = SETUP

#: ``rlconform setup bench``: every framework that can share one environment with the others,
#: for ``python -m benchmarks`` (timed in one process). Left out, and timed in their own
#: environments, bridged through the shared anchors (benchmarks/README.md): verl (it pins
#: ``tensordict==0.10`` and ``transformers<5.11`` where torchrl wants tensordict 0.14 and TRL
#: comes with transformers 5.24) and OpenRLHF (its trainer files import
#: ``transformers.integrations.deepspeed``, which with TRL's accelerate installed asks for
#: deepspeed's module spec, and the stand-in the adapter registers for deepspeed has none:
#: ``ValueError: deepspeed.__spec__ is None``).
GROUPS: dict[str, tuple[str, ...]] = {
    "bench": ("trl", "torchrl", "liger", "skyrl"),
}


def setup(framework: str, dry_run: bool = False) -> int:
    if framework in GROUPS:
        for member in GROUPS[framework]:
            status = setup(member, dry_run=dry_run)
            if status:
                return status
        return 0
    if framework not in FRAMEWORKS:
        print(f"rlconform: unknown framework {framework!r}; bundled: {', '.join(FRAMEWORKS)}",
              file=sys.stderr)
        return 2
    how, what = FRAMEWORKS[framework]
    if how == "pip":
        cmd = [sys.executable, "-m", "pip", "install", *what]
    else:
        cmd = ["bash", str(ADAPTERS / what), sys.executable, PINS[framework]]
    print("rlconform setup:", " ".join(cmd))
    if dry_run:
        return 0
    return subprocess.call(cmd)
