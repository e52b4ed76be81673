"""The fused kernel compiles for a real GPU target (sm_90) with vectorized memory access.

The interpreter used by the other tests accepts code the GPU compiler would reject, so this
compiles the kernel ahead of time with the ptxas that ships in the triton wheel — no GPU needed.
It runs in a child process: the interpreter (TRITON_INTERPRET=1, set for the other tests) patches
triton.language process-wide. The child imports ``rsst_kernels`` alone (`kernels_only_env`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # starts real runs or subprocesses

pytest.importorskip("triton")

VARIANTS = [(s, False, False, False) for s in range(5)] + [(4, True, True, False),
                                                          (4, False, False, True),
                                                          (4, True, True, True)]

SCRIPT = textwrap.dedent("""
    import inspect, json, re, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from rsst_kernels.fused_update import _fused_update_kernel

    params = inspect.signature(triton.compiler.ASTSource.__init__).parameters
    if "attrs" not in params or "constexprs" not in params:
        print(json.dumps({"skip": "this triton's ASTSource API differs"})); sys.exit()
    signature = {"w_ptr": "*fp32", "g_ptr": "*fp32", "buf_ptr": "*fp32", "code_ptr": "*u8",
                 "hyper_ptr": "*fp32", "anchor_ptr": "*fp32", "n": "i64",
                 "SCHEDULE": "constexpr", "NESTEROV": "constexpr",
                 "BLOCK_LOSS_GRAD": "constexpr", "ADMM": "constexpr", "BLOCK": "constexpr"}
    # what the JIT sees for an arena: 16-byte aligned buffers, a length that is a multiple of 16
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(7)}
    out = {}
    for schedule, nesterov, block, admm in json.loads(sys.argv[1]):
        source = triton.compiler.ASTSource(
            fn=_fused_update_kernel, signature=signature,
            constexprs={(7,): schedule, (8,): nesterov, (9,): block, (10,): admm, (11,): 4096},
            attrs=attrs)
        ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                             options={"num_warps": 8}).asm["ptx"]
        out[f"{schedule}-{nesterov}-{block}-{admm}"] = {
            "v4_loads": len(re.findall(r"ld\\.global(\\.\\w+)*\\.v4", ptx)),
            "v4_stores": len(re.findall(r"st\\.global(\\.\\w+)*\\.v4", ptx)),
        }
    from rsst_kernels.fused_adamw import _fused_adamw_kernel
    signature = {"w_ptr": "*fp32", "g_ptr": "*fp32", "m_ptr": "*fp32", "v_ptr": "*fp32",
                 "code_ptr": "*u8", "hyper_ptr": "*fp32", "n": "i64", "SCHEDULE": "constexpr",
                 "BLOCK_LOSS_GRAD": "constexpr", "BLOCK": "constexpr"}
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(7)}
    for schedule, block in ((4, False), (0, True)):
        source = triton.compiler.ASTSource(
            fn=_fused_adamw_kernel, signature=signature,
            constexprs={(7,): schedule, (8,): block, (9,): 4096}, attrs=attrs)
        ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                             options={"num_warps": 8}).asm["ptx"]
        out[f"adamw-{schedule}-{block}"] = {
            "v4_loads": len(re.findall(r"ld\\.global(\\.\\w+)*\\.v4", ptx)),
            "v4_stores": len(re.findall(r"st\\.global(\\.\\w+)*\\.v4", ptx)),
        }
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def compiled(kernels_only_env) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(VARIANTS)],
                          env=kernels_only_env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "ptxas" in proc.stderr.lower():
        pytest.skip("no ptxas in this triton build")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    return result


@pytest.mark.parametrize("schedule,nesterov,block_loss_grad,admm", VARIANTS)
def test_compiles_for_sm90_with_vector_access(compiled, schedule, nesterov, block_loss_grad,
                                              admm):
    counts = compiled[f"{schedule}-{nesterov}-{block_loss_grad}-{admm}"]
    # w, g and momentum move as 128-bit loads and stores (the kernel is bandwidth-bound)
    assert counts["v4_loads"] >= 3 and counts["v4_stores"] >= 3, counts
    if admm:  # and so does the ADMM anchor: more 128-bit loads than without the term
        plain = compiled[f"{schedule}-{nesterov}-{block_loss_grad}-False"]
        assert counts["v4_loads"] > plain["v4_loads"], (counts, plain)


@pytest.mark.parametrize("variant", ["adamw-4-False", "adamw-0-True"])
def test_adamw_compiles_for_sm90_with_vector_access(compiled, variant):
    counts = compiled[variant]
    # w, g, m and v move as 128-bit loads and stores
    assert counts["v4_loads"] >= 4 and counts["v4_stores"] >= 4, counts
