"""Every BLAS at its proper kernel: the core type chosen from the CPU's flags, faiss's
OpenBLAS loaded with it, and the kernels reported for run.json."""

import json
import os
import subprocess
import sys

from d2scale.blas import blas_kernels, proper_coretype


def test_the_core_type_follows_the_cpu_flags():
    assert proper_coretype({"sse2", "avx", "avx2", "avx512f"}) == "SKYLAKEX"
    assert proper_coretype({"sse2", "avx", "avx2"}) == "HASWELL"
    assert proper_coretype({"sse2"}) is None


def test_faiss_loads_its_blas_at_the_proper_kernel_in_a_fresh_process():
    """Without OPENBLAS_CORETYPE, faiss's OpenBLAS gets the CPU's proper kernel; a value set
    in the environment (some machines need one) is kept as it is."""
    code = ("import os, json\n"
            "from d2scale.blas import load_faiss, blas_kernels, cpu_flags, proper_coretype\n"
            "load_faiss(); print(json.dumps([proper_coretype(cpu_flags()), blas_kernels(),"
            " os.environ.get('OPENBLAS_CORETYPE')]))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    core, kernels, chosen = json.loads(out)
    given = os.environ.get("OPENBLAS_CORETYPE")
    if given is not None:
        assert chosen == given  # the user's (or the machine's) value is kept
        return
    assert chosen == core
    faiss_blas = [k for k in kernels if "openblaso" in k["library"]]
    if core is not None and faiss_blas:
        assert all(k["kernel"].upper() == core for k in faiss_blas), kernels
        assert not any(k["generic_fallback"] for k in kernels), kernels


def test_run_json_facts_name_each_blas():
    for k in blas_kernels():
        assert {"library", "version", "kernel", "threads", "generic_fallback"} <= set(k)
