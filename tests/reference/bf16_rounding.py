#!/usr/bin/env python3
"""float32 -> bfloat16 rounding as PyTorch does it (`tensor.to(torch.bfloat16)`: to nearest, ties
to even, subnormals kept), for ftune's bf16 GEMM packing (tests/test_bf16.cpp).

Writes tests/reference/fixtures/bf16/rounding.safetensors:
  input (N,) int32   float32 bit patterns: hand-picked cases (ties up and down, the largest
                     finite float, values that round to infinity, subnormals, signed zeros,
                     infinities, NaNs) and 4,000 random bit patterns
  rounded (N,) int16 the bfloat16 bits PyTorch gives for each

Usage: python3 tests/reference/bf16_rounding.py   (needs torch, safetensors)
"""
import pathlib
import struct

import torch
from safetensors.torch import save_file


def bits(f):
    return struct.unpack("<i", struct.pack("<f", f))[0]


def main():
    cases = [0.0, -0.0, 1.0, -1.0, 3.0, 1.0 / 3.0, 65504.0, 3.4028234663852886e38,
             float("inf"), float("-inf"), 1e-40, -1e-40, 1.1754942e-38, 1.17549435e-38, 1e-45]
    words = [bits(c) for c in cases]
    words += [0x3F808000, 0x3F818000, 0x3F808001, 0x3F817FFF,  # ties to even, just above/below
              0x7F7F8000, 0x7F7FFFFF,  # round up to infinity
              0x00008000, 0x00018000, 0x807FFFFF,  # subnormal ties
              0x7FC00000, 0x7F800001, 0xFFC12345 - (1 << 32), 0x7FFFFFFF]  # NaNs
    g = torch.Generator().manual_seed(0)
    rnd = torch.randint(-(1 << 31), (1 << 31) - 1, (4000,), generator=g, dtype=torch.int64)
    words += [int(w) for w in rnd]
    x = torch.tensor(words, dtype=torch.int64).to(torch.int32)
    rounded = x.view(torch.float32).to(torch.bfloat16).view(torch.int16)
    out = pathlib.Path(__file__).parent / "fixtures" / "bf16"
    out.mkdir(parents=True, exist_ok=True)
    save_file({"input": x.contiguous(), "rounded": rounded.contiguous()},
              str(out / "rounding.safetensors"))
    print(f"wrote {len(words)} cases to {out / 'rounding.safetensors'}")


if __name__ == "__main__":
    main()
