"""GFLOP/s of oneDNN's 3x3 convolutions per dtype and memory layout, at Karlo's UNet shapes (one thread, process CPU time).

    python benchmarks/conv_layouts.py

Why half precision runs the UNets channels_last on the CPU and fp32 does not (README "Speed").
"""

import time

import torch
import torch.nn.functional as F


def cpu_seconds(fn, reps: int = 2) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def main() -> None:
    torch.set_num_threads(1)
    for B, C, S in ((1, 320, 256), (1, 640, 128), (1, 1280, 32), (2, 320, 64), (2, 960, 16)):
        row = []
        for dt in (torch.float32, torch.bfloat16):
            x = torch.randn(B, C, S, S).to(dt)
            w = (torch.randn(C, C, 3, 3) / (C * 9) ** 0.5).to(dt)
            for fmt in ("plain", "channels_last"):
                xx, ww = (x, w) if fmt == "plain" else (x.to(memory_format=torch.channels_last),
                                                         w.to(memory_format=torch.channels_last))
                with torch.no_grad():
                    s = cpu_seconds(lambda: F.conv2d(xx, ww, padding=1))
                row.append(f"{str(dt)[6:]}/{fmt} {2 * B * C * C * 9 * S * S / s / 1e9:6.1f}")
        print(f"batch {B}, {C} channels, {S}x{S}: " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
