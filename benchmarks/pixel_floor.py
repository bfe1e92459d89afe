"""The CPU floor of a center-cropped 256 px sample: decode, resize and encode, nothing else.

    .venv/bin/python benchmarks/pixel_floor.py [--pool 300] [--repeat 5] [--images DIR]

On the JPEG pool that throughput.py serves (core_run.make_pool), times per image, in one thread
(medians of --repeat passes over the pool): FLOW-DC's own steps (processing.py: Pillow decode with
draft, area-averaging (BOX) crop-resize, JPEG quality 95) and, when img2dataset's environment
exists (benchmarks/.venv-img2dataset, made by throughput.py), img2dataset's steps (OpenCV
imdecode, INTER_AREA resize, imencode quality 95). The sum of FLOW-DC's steps, plus the CPU of a
download that keeps the original bytes (throughput.py's wds-http case), is the least CPU a
resized sample can cost; img2dataset's CPU per resized image divided by it is the most that the
ratio of the two tools' images/s can be on a machine where both are CPU-bound.

With --images DIR, the JPEGs of that folder (*.jpg) are timed instead of the generated pool: the
wild bed's photo-like pool (benchmarks/wild.py, cached under ~/.cache/flowdc-wild) for instance.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from core_run import make_pool

I2D_PYTHON = Path(__file__).resolve().parent / ".venv-img2dataset" / "bin" / "python"

# Run in a fresh interpreter (FLOW-DC's, or img2dataset's): prints {step: median ms per image}.
STEPS = """
import io, json, statistics, sys, time
from pathlib import Path
datas = [p.read_bytes() for p in sorted(Path(sys.argv[1]).glob("*.jpg"))]
repeat = int(sys.argv[2])
def timed(step, inputs):
    passes = []
    for _ in range(repeat):
        started = time.process_time()
        outputs = [step(item) for item in inputs]
        passes.append((time.process_time() - started) / len(inputs) * 1e3)
    return statistics.median(passes), outputs
if sys.argv[3] == "pillow":
    from PIL import Image
    def decode(data):
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (256, 256))
        image.load()
        return image
    def resize(image):
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        box = (left, top, left + side, top + side)
        return image.resize((256, 256), Image.Resampling.BOX, box=box)
    def encode(image):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=95)
        return buffer.getvalue()
else:
    import cv2
    import numpy as np
    cv2.setNumThreads(1)
    def decode(data):
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    def resize(image):
        h, w = image.shape[:2]
        side = min(w, h)
        top, left = (h - side) // 2, (w - side) // 2
        crop = image[top : top + side, left : left + side]
        return cv2.resize(crop, (256, 256), interpolation=cv2.INTER_AREA)
    def encode(image):
        return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
result = {}
result["decode"], images = timed(decode, datas)
result["resize"], small = timed(resize, images)
result["encode"], _ = timed(encode, small)
print(json.dumps(result))
"""


def steps(python: Path, pool: Path, repeat: int, kind: str) -> dict[str, float]:
    command = [str(python), "-c", STEPS, str(pool), str(repeat), kind]
    return json.loads(subprocess.run(command, check=True, capture_output=True).stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--images", help="time the *.jpg of this folder instead of a made pool")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flowdc-pixels-") as folder:
        pool = Path(folder)
        if args.images:
            pool = Path(args.images)
            args.pool = len(list(pool.glob("*.jpg")))
        else:
            make_pool(pool, args.pool)
        tools = {"FLOW-DC (Pillow)": steps(Path(sys.executable), pool, args.repeat, "pillow")}
        if I2D_PYTHON.exists():
            tools["img2dataset (OpenCV)"] = steps(I2D_PYTHON, pool, args.repeat, "opencv")
    print(f"ms of CPU per image, one thread, medians of {args.repeat} passes over {args.pool}")
    print(f"{'steps':<22}{'decode':>8}{'resize':>8}{'encode':>8}{'sum':>8}")
    for name, times in tools.items():
        total = sum(times.values())
        print(
            f"{name:<22}{times['decode']:>8.2f}{times['resize']:>8.2f}{times['encode']:>8.2f}"
            f"{total:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
