"""The GPU smoke's parts, one per call (``benchmarks/gpu_smoke.sh`` runs them in order).

    python -m benchmarks.gpu_smoke PART --work DIR --json FILE [--tiny]

Parts (each writes its figures to ``--json``; a failed check exits 1, after writing):

* ``env``         versions, the GPU, bf16 support, the measured bf16 matmul rate (the
                  denominator of MFU next to the datasheet's);
* ``ring``        (b) the ring's CUDA kernels without a second GPU: ``ring_simulation``
                  for 2 and 4 chunks, bf16 (flash) and fp32 (memory-efficient), forward and
                  backward, against unsharded attention;
* ``recipe``      (a) ``configs/llama3-8b/32k-abf-longred-c.yaml`` with
                  ``configs/trainer/fsdp2-8gpu.yaml`` as written, on one GPU (FSDP2 over 1
                  rank), a ~1.2B random Llama, every length / 4 (long 8K), bf16-mixed: one
                  step with clipping, a checkpoint, a resume for the second step, an export;
* ``throughput``  (c) tokens/s and MFU of ``long_cpt`` and ``longred`` at 8K and 32K long
                  tokens with activation checkpointing, and (d) the peak memory of one long
                  micro-step next to the README's estimate (``flops.long_microstep_bytes``).

``--tiny`` runs every part at toy sizes, on the CPU when there is no GPU: the smoke's own
test (``tests/integration/test_gpu_smoke.py``) proves each part runs before a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.gpu_smoke import parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_smoke",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("part", choices=sorted(parts.PARTS))
    parser.add_argument("--work", type=Path, required=True, help="scratch directory")
    parser.add_argument("--json", type=Path, required=True, help="where the figures go")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (CPU without a GPU)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="measured bf16 matmul rate for MFU (default: read env's JSON)",
    )
    args = parser.parse_args(argv)
    common.quiet()
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result: dict[str, Any] = {"part": args.part, "tiny": args.tiny}
    ok = True
    try:
        figures, ok = parts.PARTS[args.part](args)
        result.update(figures)
    except Exception as err:  # noqa: BLE001  (recorded, then the part fails)
        import traceback

        result["error"] = f"{type(err).__name__}: {err}"
        traceback.print_exc()
        ok = False
    result.update(ok=ok, seconds=round(time.perf_counter() - start, 1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
