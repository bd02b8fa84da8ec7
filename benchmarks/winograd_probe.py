"""Would Winograd F(2x2, 3x3) make fp32 3x3 convolutions faster on this CPU? (tried, not used)

The 64->256 upsampler is ~90% 3x3 convolutions (README "Where the time goes"). Winograd F(2x2, 3x3) needs 2.25x
fewer multiplies; written in plain PyTorch ops (no compiler at run time) it is timed here part by part against
oneDNN's direct convolution (F.conv2d), in one process, interleaved, best of `--repeat`.

    python benchmarks/winograd_probe.py [--threads 1] [--repeat 3]
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

G = torch.tensor([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=torch.float64)


def weight_transform(w: torch.Tensor) -> torch.Tensor:
    """[K, C, 3, 3] -> U [16, C, K] (G g G^T per filter)."""
    u = torch.einsum("ai,kcij,bj->abck", G, w.double(), G)
    return u.reshape(16, w.shape[1], w.shape[0]).to(w.dtype).contiguous()


def input_transform(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> V [16, N * H/2 * W/2, C] (B^T d B over 4x4 tiles at stride 2, padding 1)."""
    n, c, h, w = x.shape
    th, tw = h // 2, w // 2
    xp = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).contiguous()
    d = [xp[:, k:k + 2 * th:2] for k in range(4)]
    r = torch.stack([d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]])
    e = [r[:, :, :, k:k + 2 * tw:2] for k in range(4)]
    return torch.stack([e[0] - e[2], e[1] + e[2], e[2] - e[1], e[1] - e[3]], 1).reshape(16, n * th * tw, c)


def output_transform(m: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """M [16, P, K] -> [N, K, H, W] (A^T m A per tile)."""
    m = m.reshape(4, 4, n, h // 2, w // 2, -1)
    s = torch.stack([m[0] + m[1] + m[2], m[1] - m[2] - m[3]])
    y = torch.stack([s[:, 0] + s[:, 1] + s[:, 2], s[:, 1] - s[:, 2] - s[:, 3]], 1)
    return y.permute(2, 5, 3, 0, 4, 1).reshape(n, -1, h, w)


def winograd_conv(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    return output_transform(torch.bmm(input_transform(x), u), n, h, w)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(min(times), 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--shapes", default="320:320:256,640:640:128,960:960:64",
                    help="comma-separated C_in:C_out:size (default: the upsampler's three top levels)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for shape in args.shapes.split(","):
        c, k, hw = (int(v) for v in shape.split(":"))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, c, hw, hw, generator=g)
        w = torch.randn(k, c, 3, 3, generator=g) / (9 * c) ** 0.5
        u = weight_transform(w)
        ref = F.conv2d(x, w, padding=1)
        err = float((winograd_conv(x, u) - ref).abs().max())
        v = input_transform(x)
        m = torch.bmm(v, u)
        row = {"in": c, "out": k, "size": hw, "threads": args.threads, "max_abs_error": err,
               "max_abs_output": float(ref.abs().max()),
               "direct_s": best(lambda: F.conv2d(x, w, padding=1), args.repeat),
               "winograd_s": best(lambda: winograd_conv(x, u), args.repeat),
               "input_transform_s": best(lambda: input_transform(x), args.repeat),
               "products_s": best(lambda: torch.bmm(v, u), args.repeat),
               "output_transform_s": best(lambda: output_transform(m, 1, hw, hw), args.repeat),
               "direct_gflop": round(2 * 9 * c * k * hw * hw / 1e9, 1),
               "products_gflop": round(2 * 16 * c * k * (hw // 2) ** 2 / 1e9, 1)}
        row["direct_again_s"] = best(lambda: F.conv2d(x, w, padding=1), args.repeat)
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
