"""Build and load the heads' C++ CPU kernels: compiled once per machine, called through ctypes.

Each kernel module (baselines.class_kernels, baselines.huffman_kernels, vqbench.heads.vq_kernels) holds its own
C++ source, so that a change to one head's kernels changes the code fingerprint of that head's rows alone; this
module holds what they share: the build, the load, and PRELUDE (bfloat16 loads and stores, dot products and axpy
with float32 accumulation, and FOR_TYPES, which instantiates a kernel for each pair of float32 / bfloat16
operands).

The kernels use the OpenMP runtime that torch itself loaded (the same ``libgomp.so.1``: one thread pool, sized by
``torch.set_num_threads``). Each library is built with the system's C++ compiler into ``$VQBENCH_CACHE``
(default ``~/.cache/vqbench``) under a name that digests its source, the flags and the CPU; where no compiler
works, ``load`` gives None and the heads take their torch path (the same results, slower), and
``VQBENCH_KERNELS=torch`` forces the torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import torch

PRELUDE = r"""
#include <cstdint>
#include <cstring>
#include <cmath>
#include <vector>
#include <algorithm>

typedef uint16_t bf16;

static inline float load(const float* p, int64_t k) { return p[k]; }
static inline float load(const bf16* p, int64_t k) {
    uint32_t bits = ((uint32_t)p[k]) << 16; float f; std::memcpy(&f, &bits, 4); return f;
}
static inline void store(float* p, int64_t k, float v) { p[k] = v; }
static inline void store(bf16* p, int64_t k, float v) {
    uint32_t bits; std::memcpy(&bits, &v, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) { p[k] = (bf16)((bits >> 16) | 0x40); return; }  // NaN stays NaN
    bits += 0x7fffu + ((bits >> 16) & 1u);                                               // round to nearest even
    p[k] = (bf16)(bits >> 16);
}

// four dot products of one row w with rows a, b, c, e (d elements each), float accumulation
template <typename TA, typename TB>
static inline void dot4(const TA* w, const TB* a, const TB* b, const TB* c, const TB* e, int64_t d, float* out) {
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+:s0, s1, s2, s3)
    for (int64_t k = 0; k < d; ++k) {
        float x = load(w, k);
        s0 += x * load(a, k); s1 += x * load(b, k); s2 += x * load(c, k); s3 += x * load(e, k);
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

template <typename TA, typename TB>
static inline float dot1(const TA* w, const TB* a, int64_t d) {
    float s = 0.f;
#pragma omp simd reduction(+:s)
    for (int64_t k = 0; k < d; ++k) s += load(w, k) * load(a, k);
    return s;
}

// y += a x (d elements), float accumulation
template <typename T>
static inline void axpy(float a, const T* __restrict__ x, float* __restrict__ y, int64_t d) {
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) y[k] += a * load(x, k);
}

#define FOR_TYPES(MACRO) MACRO(f32, f32, float, float) MACRO(f32, bf16, float, bf16) \
                         MACRO(bf16, f32, bf16, float) MACRO(bf16, bf16, bf16, bf16)
"""

FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}
POINTER, INT64, INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def library_path(name: str, source: str) -> str:
    key = hashlib.sha256("\n".join([PRELUDE, source, " ".join(FLAGS), platform.machine(), _cpu_flags()]).encode())
    cache = os.environ.get("VQBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vqbench")
    return os.path.join(cache, "kernels", f"{name}-{key.hexdigest()[:16]}.so")


def _build(path: str, source: str) -> None:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise OSError("no C++ compiler (g++ or $CXX) on PATH")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as scratch:
        source_file = os.path.join(scratch, "kernels.cpp")
        with open(source_file, "w", encoding="utf-8") as f:
            f.write(PRELUDE + source)
        built = os.path.join(scratch, "kernels.so")
        subprocess.run([compiler, *FLAGS, source_file, "-o", built], check=True, capture_output=True, timeout=300)
        os.replace(built, path)  # atomic: a concurrent build of the same source leaves one whole file


def load(name: str, source: str, typed: Dict[str, List], plain: Dict[str, Tuple[List, object]] = None
         ) -> Optional[ctypes.CDLL]:
    """The library ``name`` built from PRELUDE + ``source``, or None where it cannot be built or loaded (or
    VQBENCH_KERNELS=torch). ``typed``: {function: argtypes} of the functions instantiated by FOR_TYPES
    (NAME_A_B for A, B in f32, bf16); ``plain``: {function: (argtypes, restype)} of the others."""
    if os.environ.get("VQBENCH_KERNELS", "") == "torch":
        return None
    path = library_path(name, source)
    try:
        if not os.path.isfile(path):
            _build(path, source)
        library = ctypes.CDLL(path)
    except (OSError, subprocess.SubprocessError):
        return None
    for function_name, argtypes in typed.items():
        for a in SUFFIX.values():
            for b in SUFFIX.values():
                function = getattr(library, f"{function_name}_{a}_{b}")
                function.argtypes, function.restype = argtypes, None
    for function_name, (argtypes, restype) in (plain or {}).items():
        function = getattr(library, function_name)
        function.argtypes, function.restype = argtypes, restype
    return library


def takes(*tensors: Optional[torch.Tensor]) -> bool:
    """True when the kernels can read these tensors: on the CPU, float32 or bfloat16, contiguous."""
    return all(t.device.type == "cpu" and t.dtype in SUFFIX and t.is_contiguous() for t in tensors)


def pointer(t: Optional[torch.Tensor]):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


def typed_function(library, name: str, first: torch.Tensor, second: torch.Tensor):
    """The instance of ``name`` for the dtypes of its two operands."""
    return getattr(library, f"{name}_{SUFFIX[first.dtype]}_{SUFFIX[second.dtype]}")
