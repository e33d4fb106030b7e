"""bf16 against fp32 on the official-layout test models (the figures README's "Precision"
paragraph and tests/models/test_precision.py quote).

For 3 seeds: the tiny official-layout VideoMamba (tests/fixtures/videomamba.py) in fp32 and
in bf16 (`models.precision`), 256 random 4x32x32 clips, 3 segments with each precision's
state carried; prints the worst and mean 1 - cosine of the embeddings and how many top-1
classes agree. Last lines: `bf16_drift_cosine_worst=`, `bf16_drift_top1_agree=`.

    .venv/bin/python benchmarks/precision_drift.py
"""

from __future__ import annotations

import copy
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.fixtures.videomamba import make_tiny_model  # noqa: E402
from vmstream.models.precision import set_precision  # noqa: E402


def main() -> None:
    worst, agree, total, means = 0.0, 0, 0, []
    for seed in range(3):
        fp32 = make_tiny_model(seed)
        bf16 = set_precision(copy.deepcopy(fp32), "bf16")
        clips = torch.randn(256, 3, 4, 32, 32, generator=torch.Generator().manual_seed(100 + seed))
        s32 = s16 = None
        with torch.inference_mode():
            for _ in range(3):
                a, b = fp32.forward_segment(clips, s32), bf16.forward_segment(clips, s16)
                s32, s16 = a.state, b.state
                d = 1 - F.cosine_similarity(a.features, b.features)
                worst = max(worst, d.max().item())
                means.append(d.mean().item())
                agree += (a.logits.argmax(-1) == b.logits.argmax(-1)).sum().item()
                total += len(clips)
    print(
        f"bf16 vs fp32, official-layout test models, 3 seeds x 3 segments x 256 clips: 1 - cosine worst "
        f"{worst:.2e}, mean {sum(means) / len(means):.1e}; top-1 identical on {agree}/{total}"
    )
    print(f"bf16_drift_cosine_worst={worst:.2e}")
    print(f"bf16_drift_top1_agree={agree}/{total}")


if __name__ == "__main__":
    main()
