"""The "fused" selective-scan backend: one C++ loop per channel on the CPU.

The kernel (``csrc/selective_scan_cpu.cpp``) keeps each channel's state in
registers, walks the sequence once and never forms a (batch, d, L, n)
tensor. The forward stores the state every ``chunk_size`` steps; the
backward recomputes one chunk at a time from those checkpoints and runs the
adjoint recurrence backwards through it. Channels run in parallel on
``torch.get_num_threads()`` OpenMP threads.

The kernel is plain C++17 with no torch headers, compiled with the system's
C++ compiler (``$CXX``, else ``c++``/``g++``/``clang++``) at first use in
seconds (no ninja, no torch.utils.cpp_extension, whose torch headers take a
minute to compile) and called through :mod:`ctypes`, which releases the GIL
during the call. The shared library is cached
under ``$LOGVMAMBA_EXTENSIONS_DIR``, else ``$TORCH_EXTENSIONS_DIR/logvmamba``,
else ``~/.cache/torch_extensions/logvmamba``, in a folder named by a hash of
the source, the compiler flags and the CPU's feature flags (it is built with
``-march=native``), so every checkout on the same machine shares one build.
Without a working compiler the backend reports itself unavailable, "auto"
falls back to the "torch" backend and one warning says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
import warnings
from typing import Optional

import torch
from torch import Tensor

from logvmamba.ops.backend import ScanBackend, as_groups, cast, compute_dtype, register_backend

__all__ = ["FusedBackend", "EXTENSIONS_ENV", "build_info", "load_library"]

EXTENSIONS_ENV = "LOGVMAMBA_EXTENSIONS_DIR"
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "selective_scan_cpu.cpp")
_ABI_VERSION = 1
# Tried in order until one compiles: tuned for this CPU, portable, serial. With AVX-512, GCC
# still prefers 256-bit vectors; a state of n = 16 floats fills one 512-bit register, which
# made the scan 1.6x faster forward and backward on this machine (ignored without AVX-512).
_FLAG_SETS = (
    ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp"],
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-fopenmp"],
    ["-O3"],
)
_COMMON_FLAGS = ["-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict = {}  # "lib", "reason", "info" once loading was tried


def _cache_root() -> str:
    root = os.environ.get(EXTENSIONS_ENV)
    if root:
        return root
    torch_root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "torch_extensions")
    return os.path.join(torch_root, "logvmamba")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build_key(source: bytes) -> str:
    h = hashlib.sha256()
    for part in (source, repr(_FLAG_SETS).encode(), repr(_COMMON_FLAGS).encode(),
                 str(_ABI_VERSION).encode(), platform.machine().encode(), platform.system().encode(),
                 _cpu_flags().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _writable_dir(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".probe-{uuid.uuid4().hex}")
        with open(probe, "w"):
            pass
        os.remove(probe)
        return path
    except OSError:
        fallback = os.path.join(tempfile.gettempdir(), f"logvmamba-ext-{os.getuid()}", os.path.basename(path))
        os.makedirs(fallback, exist_ok=True)
        return fallback


def _compile(source_path: str, out_path: str) -> tuple[list[str], float]:
    """Compiles the kernel into ``out_path`` (atomically); returns the flags used and seconds."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++/clang++)")
    errors = []
    t0 = time.perf_counter()
    for flags in _FLAG_SETS:
        tmp = os.path.join(os.path.dirname(out_path), f".build-{os.getpid()}-{uuid.uuid4().hex}.so")
        cmd = [cxx, *flags, *_COMMON_FLAGS, source_path, "-o", tmp]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append(f"{' '.join(flags)}: {e}")
            continue
        if res.returncode == 0:
            os.replace(tmp, out_path)  # atomic: concurrent builders never see half a file
            return flags, time.perf_counter() - t0
        if os.path.exists(tmp):
            os.remove(tmp)
        errors.append(f"{' '.join(flags)}: {res.stderr.strip().splitlines()[-1:] or res.returncode}")
    raise RuntimeError("compiling the kernel failed: " + "; ".join(errors))


def _bind(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    if lib.lvm_abi_version() != _ABI_VERSION:
        raise RuntimeError(f"{path} has ABI version {lib.lvm_abi_version()}, expected {_ABI_VERSION}")
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    head = [p] * 8 + [i32] + [i64] * 7 + [i32]
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, f"lvm_scan_fwd_{suffix}")
        fwd.argtypes, fwd.restype = head + [p] * 3, i32
        bwd = getattr(lib, f"lvm_scan_bwd_{suffix}")
        bwd.argtypes, bwd.restype = head + [p] * 11, i32
    return lib


def _load() -> tuple[Optional[ctypes.CDLL], Optional[str], dict]:
    """Loads (building first if needed) the kernel library; (lib, reason, info)."""
    try:
        with open(_SOURCE, "rb") as f:
            source = f.read()
    except OSError as e:
        return None, f"kernel source missing ({e})", {}
    key = _build_key(source)
    folder = _writable_dir(os.path.join(_cache_root(), f"scan_cpu_{key}"))
    lib_path = os.path.join(folder, "selective_scan_cpu.so")
    info = {"library": lib_path, "key": key, "built": False}
    if os.path.exists(lib_path):
        try:
            return _bind(lib_path), None, info
        except (OSError, AttributeError, RuntimeError) as e:  # damaged or foreign file: build anew
            log.warning("cached %s cannot be loaded (%s); rebuilding it", lib_path, e)
    src_copy = os.path.join(folder, "selective_scan_cpu.cpp")
    tmp = f"{src_copy}.{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(source)
    os.replace(tmp, src_copy)
    log.info("compiling the fused CPU selective scan into %s (once per machine)", folder)
    flags, seconds = _compile(src_copy, lib_path)
    info.update(built=True, flags=flags, compile_seconds=seconds)
    return _bind(lib_path), None, info


def load_library() -> Optional[ctypes.CDLL]:
    """The kernel library, built on first call; None (with one warning) if it cannot be."""
    with _lock:
        if not _state:
            try:
                lib, reason, info = _load()
            except Exception as e:  # noqa: BLE001 - any build or load failure means "fall back"
                lib, reason, info = None, f"{type(e).__name__}: {e}", {}
            _state.update(lib=lib, reason=reason, info=info)
            if lib is None:
                warnings.warn(f"logvmamba: fused CPU selective scan unavailable ({reason}); "
                              "falling back to the torch backend", RuntimeWarning, stacklevel=3)
        return _state["lib"]


def build_info() -> dict:
    """Where the library lives, whether this process built it, and how long it took."""
    load_library()
    return dict(_state.get("info", {}), reason=_state.get("reason"))


def _ptr(t: Optional[Tensor]):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _prep(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else cast(t, dtype).contiguous()


class FusedBackend(ScanBackend):
    """Fused C++ scan for CPU tensors, forward and backward (see module docstring).

    Args:
        chunk_size: steps between stored states; the backward recomputes one
            chunk of (chunk_size, n) states at a time per thread.
    """

    name = "fused"

    def __init__(self, chunk_size: int = 128):
        self.chunk_size = chunk_size

    def unavailable_reason(self, u=None):
        if u is not None and u.device.type != "cpu":
            return f"the fused kernel runs on CPU tensors, got {u.device}"
        if load_library() is None:
            return _state.get("reason") or "the kernel library could not be loaded"
        return None

    # The channels of one (batch, group) pair form a task's work; a pair is
    # cut into `parts` slices so that every thread has work. The backward
    # sums each slice's gradient of B and C into its own buffer, so it uses as
    # few slices as keep the threads busy.
    @staticmethod
    def _parts(pairs: int, per_group: int, threads: int, backward: bool) -> int:
        if backward:
            parts = min(threads // math.gcd(pairs, threads), 2 * math.ceil(threads / pairs))
        else:
            parts = math.ceil(4 * threads / pairs)
        return max(1, min(per_group, parts))

    def _common(self, inputs):
        cdt = compute_dtype(*inputs)
        u, delta, A, B, C, D, z, bias = inputs
        u, delta, A, D, z, bias = (_prep(t, cdt) for t in (u, delta, A, D, z, bias))
        Bt = cast(as_groups(B), cdt).transpose(-1, -2).contiguous()
        Ct = cast(as_groups(C), cdt).transpose(-1, -2).contiguous()
        b, d, L = u.shape
        groups, n = Bt.shape[1], A.shape[1]
        chunk = max(1, min(int(self.chunk_size), L))
        threads = torch.get_num_threads()
        suffix = "f64" if cdt == torch.float64 else "f32"
        return cdt, (u, delta, A, Bt, Ct, D, z, bias), (b, d, groups, L, n, chunk), threads, suffix

    def forward(self, inputs, delta_softplus):
        lib = load_library()
        cdt, (u, delta, A, Bt, Ct, D, z, bias), (b, d, g, L, n, K), threads, sfx = self._common(inputs)
        parts = self._parts(b * g, d // g, threads, backward=False)
        y = u.new_empty(b, d, L)
        last = u.new_empty(b, d, n)
        ckpt = u.new_empty(b, d, -(-L // K), n)
        rc = getattr(lib, f"lvm_scan_fwd_{sfx}")(
            *(_ptr(t) for t in (u, delta, A, Bt, Ct, D, z, bias)), int(delta_softplus),
            b, d, g, L, n, K, parts, threads, _ptr(y), _ptr(last), _ptr(ckpt))
        if rc != 0:
            raise RuntimeError("fused selective scan forward failed (a work buffer could not be allocated)")
        return y, last, (ckpt,)

    def backward(self, inputs, extra, delta_softplus, gy, glast):
        lib = load_library()
        (ckpt,) = extra
        cdt, (u, delta, A, Bt, Ct, D, z, bias), (b, d, g, L, n, K), threads, sfx = self._common(inputs)
        if ckpt.shape[2] != -(-L // K):
            raise RuntimeError("chunk_size changed between forward and backward")
        parts = self._parts(b * g, d // g, threads, backward=True)
        gy, glast = _prep(gy, cdt), _prep(glast, cdt)
        gu, gdelta = torch.empty_like(u), torch.empty_like(u)
        gz = torch.empty_like(u) if z is not None else None
        gBt = u.new_empty(b, g, parts, L, n)
        gCt = u.new_empty(b, g, parts, L, n)
        gA, gD, gbias = u.new_empty(b, d, n), u.new_empty(b, d), u.new_empty(b, d)
        rc = getattr(lib, f"lvm_scan_bwd_{sfx}")(
            *(_ptr(t) for t in (u, delta, A, Bt, Ct, D, z, bias)), int(delta_softplus),
            b, d, g, L, n, K, parts, threads,
            *(_ptr(t) for t in (ckpt, gy, glast, gu, gdelta, gz, gBt, gCt, gA, gD, gbias)))
        if rc != 0:
            raise RuntimeError("fused selective scan backward failed (a work buffer could not be allocated)")
        gBt = gBt.sum(2) if parts > 1 else gBt[:, :, 0]
        gCt = gCt.sum(2) if parts > 1 else gCt[:, :, 0]
        return (gu, gdelta, gA.sum(0), gBt.transpose(-1, -2), gCt.transpose(-1, -2),
                None if D is None else gD.sum(0), gz, None if bias is None else gbias.sum(0))


register_backend(FusedBackend())
