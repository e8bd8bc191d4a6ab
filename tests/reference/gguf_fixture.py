"""A small GGUF file with one tensor of every type ftune dequantizes, and the values the `gguf`
package (llama.cpp's own Python reader, gguf-py) dequantizes them to.

Writes tests/reference/fixtures/gguf/types.gguf and types_expected.safetensors (float32, the
tensor names of the GGUF). Quantized blocks hold random bytes with scales drawn in a sane range
(every bit pattern of a block is a valid block, so random bytes exercise every nibble, sign and
high bit; the half-precision scales are written as finite halves). Metadata of every value type
is included so the reader's parsing is checked too.

    /tmp/ref/bin/pip install gguf numpy safetensors
    /tmp/ref/bin/python tests/reference/gguf_fixture.py
"""
import os
from importlib.metadata import version

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter, quants
from gguf.constants import GGML_QUANT_SIZES
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "gguf")
rng = np.random.default_rng(1234)


def half_bytes(values):
    return np.asarray(values, dtype=np.float16).view(np.uint8)


def random_blocks(qtype, rows, cols):
    """rows x cols values of qtype as random blocks whose half scales are finite and modest."""
    block, size = GGML_QUANT_SIZES[qtype]
    n = rows * cols // block
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    # byte offsets of the half-precision scale fields in each block layout
    halves = {Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
              Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}[qtype]
    for off in halves:
        raw[:, off:off + 2] = half_bytes(rng.uniform(-0.05, 0.05, size=n)).reshape(n, 2)
    return raw.reshape(rows, cols // block * size)


def main():
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "types.gguf")
    w = GGUFWriter(path, arch="llama")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -5)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_uint64("test.u64", 2**40 + 3)
    w.add_int64("test.i64", -(2**40) - 3)
    w.add_float32("test.f32", 0.25)
    w.add_float64("test.f64", -1.5)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo ✓")
    w.add_array("test.strings", ["a", "", "ĠThe"])
    w.add_array("test.ints", [1, -2, 3])
    expected = {}
    rows, cols = 2, 512  # two K-quant super-blocks, sixteen 32-value blocks per row
    for name, qtype in [("f32", Q.F32), ("f16", Q.F16), ("bf16", Q.BF16), ("q4_0", Q.Q4_0),
                        ("q4_1", Q.Q4_1), ("q5_0", Q.Q5_0), ("q5_1", Q.Q5_1), ("q8_0", Q.Q8_0),
                        ("q4_k", Q.Q4_K), ("q5_k", Q.Q5_K), ("q6_k", Q.Q6_K)]:
        tensor = f"t.{name}"
        if qtype == Q.F32:
            values = rng.standard_normal((rows, cols)).astype(np.float32)
            w.add_tensor(tensor, values)
            expected[tensor] = values
            continue
        if qtype in (Q.F16, Q.BF16):
            values = rng.standard_normal((rows, cols)).astype(np.float32)
            raw = quants.quantize(values, qtype)
        else:
            raw = random_blocks(qtype, rows, cols)
        w.add_tensor(tensor, raw, raw_shape=raw.shape, raw_dtype=qtype)
        expected[tensor] = quants.dequantize(raw, qtype).astype(np.float32).reshape(rows, cols)
    # a 3-D tensor: the file stores its extents innermost first
    cube = rng.standard_normal((2, 3, 32)).astype(np.float32)
    w.add_tensor("t.cube", cube)
    expected["t.cube"] = cube
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # what gguf-py reads back, as a check of the writer
    r = GGUFReader(path)
    assert len(r.tensors) == len(expected)
    save_file({k: np.ascontiguousarray(v) for k, v in expected.items()},
              os.path.join(OUT, "types_expected.safetensors"),
              metadata={"gguf": version("gguf"), "numpy": np.__version__})
    print(path, os.path.getsize(path), "bytes;", len(expected), "tensors")


if __name__ == "__main__":
    main()
