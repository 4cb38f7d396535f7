"""Compile every Triton kernel of ssimlayer._triton_eq8 for a CUDA target, without a GPU.

Run by tests/test_triton_kernels.py in a fresh process without ``TRITON_INTERPRET`` (the interpreter
checks what the kernels compute, not whether Triton's compiler accepts them). Prints one line per
kernel and configuration and exits non-zero if any fails.

It also checks what the interpreter cannot: that a float64 kernel computes in float64 only. The
compiler passes a Python float argument as float32 (the interpreter keeps it float64), which once
made C1 and C2 float32-rounded on the GPU and the float64 kernel tests miss 1e-9 there; so no
``f32`` may appear in a float64 kernel's Triton IR.
"""

from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import ssimlayer._triton_eq8 as kernels

# Every kernel, in the order reported; their pointer arguments are those named ``*_ptr``.
KERNELS = ("_forward_kernel", "_backward_kernel", "_window_terms_kernel")
# C1 and C2: compile-time constants of the kernels, so that they take the tensors' dtype (as a
# run-time argument a Python float is float32).
CONSTANTS = dict(c1=1e-4, c2=9e-4)
# Integer arguments a plain layer (stride 1, dilation 1, one group, no split) passes as 1: Triton
# specialises those to constants, which changes the code it compiles.
ONES = ("stride_h", "stride_w", "dil_h", "dil_w", "groups", "splits", "pq_splits", "c_splits")
TILES = dict(BLOCK=64, C_TILE=8, K_TILE=8, N_BLOCK=64, W_BLOCK=64)
CONFIGS = [
    ("float32, k3, 1s specialised", "fp32", dict(KH=3, KW=3, INPUT=True, FILTER=True), True),
    (
        "float32, k7, generic ints, input gradient only",
        "fp32",
        dict(KH=7, KW=7, INPUT=True, FILTER=False),
        False,
    ),
    (
        "float64, 1x1 smallest tiles, filter gradient only",
        "fp64",
        dict(
            KH=1,
            KW=1,
            BLOCK=16,
            C_TILE=2,
            K_TILE=2,
            N_BLOCK=2,
            W_BLOCK=16,
            INPUT=False,
            FILTER=True,
        ),
        False,
    ),
]


def compile_all() -> int:
    target = GPUTarget("cuda", 90, 32)
    failures = 0
    for label, dtype, shared, ones in CONFIGS:
        for name in KERNELS:
            fn = getattr(kernels, name)
            constexprs = {**TILES, **shared}
            signature, constants = {}, {}
            for index, arg in enumerate(fn.arg_names):
                if arg in constexprs or (arg in CONSTANTS and fn.params[index].is_constexpr):
                    signature[arg] = "constexpr"
                    constants[(index,)] = {**CONSTANTS, **constexprs}[arg]
                elif arg in CONSTANTS:  # a Python float argument: what the launcher passes
                    signature[arg] = "fp32"
                elif ones and arg in ONES:
                    signature[arg] = "constexpr"
                    constants[(index,)] = 1
                elif arg.endswith("_ptr"):
                    signature[arg] = f"*{dtype}"
                else:
                    signature[arg] = "i32"
            try:
                compiled = triton.compile(
                    ASTSource(fn, signature, constexprs=constants), target=target
                )
                if dtype == "fp64" and "f32" in compiled.asm["ttir"]:
                    raise TypeError("the float64 kernel computes something in float32")
                print(f"OK    {name} ({label})")
            except Exception as err:  # report every failure, not only the first
                failures += 1
                print(f"FAIL  {name} ({label}): {type(err).__name__}: {err}")
    return failures


if __name__ == "__main__":
    sys.exit(1 if compile_all() else 0)
