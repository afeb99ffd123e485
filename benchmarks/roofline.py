"""Shared pieces of the speed benchmarks: same-run machine probes, XLA operation counts and trace summaries.

A *simple roofline*: XLA's cost analysis counts the flops and bytes of a compiled step; a same-run float32
matmul gives the machine's attainable flop/s and a same-run streaming add its attainable bytes/s; the
fractions printed are the achieved rates over these. XLA counts the whole operand of a gather as accessed,
so its byte count is an upper bound on the traffic of gather-heavy steps.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp


def _best_seconds(call, argument, repeats: int):
    """Shortest of ``repeats`` timed calls (after a warm-up): the machine's rate when it gets a core."""
    argument = jax.block_until_ready(call(argument))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        argument = jax.block_until_ready(call(argument))
        best = min(best, time.perf_counter() - start)
    return best


def matmul_probe(size: int = 1024, repeats: int = 20) -> float:
    """float32 matmul rate of this machine right now, flop/s (fastest of ``repeats`` calls)."""
    multiply = jax.jit(lambda x: x @ x * (1.0 / size))
    return 2.0 * size**3 / _best_seconds(multiply, jnp.ones((size, size), jnp.float32), repeats)


def bandwidth_probe(megabytes: int = 64, repeats: int = 20) -> float:
    """Streaming rate of this machine right now, bytes/s: read + write of a float32 array of ``megabytes``
    updated in place (donated buffer, so no page faults of fresh allocations are timed)."""
    add = jax.jit(lambda v: v + 1.0, donate_argnums=0)
    return 2.0 * megabytes * 2**20 / _best_seconds(add, jnp.ones(megabytes * 2**20 // 4, jnp.float32), repeats)


def xla_cost(compiled) -> tuple[float, float]:
    """(flops, bytes accessed) XLA's cost analysis counts for one call of a compiled function."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def roofline(flops: float, bytes_accessed: float, seconds: float, matmul: float, bandwidth: float) -> str:
    """One line: the flop/s and bytes/s of ``flops`` and ``bytes_accessed`` (XLA's counts) done in
    ``seconds``, as fractions of the same-run matmul and streaming probes."""
    achieved, traffic = flops / seconds, bytes_accessed / seconds
    return (f"roofline: {achieved / 1e9:.3f} GFLOP/s = {100 * achieved / matmul:.2f} % of the "
            f"{matmul / 1e9:.1f} GFLOP/s matmul probe; XLA-counted traffic {traffic / 1e9:.2f} GB/s = "
            f"{100 * traffic / bandwidth:.1f} % of the {bandwidth / 1e9:.1f} GB/s streaming probe")


UNTIMED_DOT = "dot_general (Eigen, not timed)"


def operation_sources(compiled) -> dict[str, str]:
    """Map each leaf instruction of the optimised HLO (not while/call/conditional, which contain others) to
    the JAX operation it came from (the last part of its metadata op_name).

    Plain ``dot`` instructions (on CPU the products XLA does not fuse, e.g. weight gradients, whose op_name
    is JAX's ``transpose``) map to :data:`UNTIMED_DOT`: they run asynchronously on Eigen's threads and the
    trace records only their dispatch, so their work is missing from the traced time.
    """
    sources = {}
    for line in compiled.as_text().splitlines():
        found = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(.*op_name=\"([^\"]+)\"", line)
        if found and found.group(2) not in ("while", "call", "conditional"):
            sources[found.group(1)] = UNTIMED_DOT if found.group(2) == "dot" else found.group(3).split("/")[-1]
    return sources


def _dims(text: str, key: str) -> tuple[int, ...]:
    found = re.search(key + r"=\{([\d,]*)\}", text)
    return tuple(int(d) for d in found.group(1).split(",") if d) if found else ()


def matrix_products(compiled) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple]]:
    """Every float32 ``dot`` of the optimised HLO, fused or not: (lhs shape, rhs shape, dimension numbers
    ((lhs contracting, rhs contracting), (lhs batch, rhs batch)) as ``jax.lax.dot_general`` takes them)."""
    text = compiled.as_text()
    shapes = {name: tuple(int(d) for d in dims.split(",") if d)
              for name, dims in re.findall(r"%?([\w.\-]+) = f32\[([\d,]*)\]", text)}
    products = []
    for lhs, rhs, rest in re.findall(r"= f32\[[\d,]*\]\S* dot\(%?([\w.\-]+), %?([\w.\-]+)\)(.*)", text):
        numbers = ((_dims(rest, "lhs_contracting_dims"), _dims(rest, "rhs_contracting_dims")),
                   (_dims(rest, "lhs_batch_dims"), _dims(rest, "rhs_batch_dims")))
        products.append((shapes[lhs], shapes[rhs], numbers))
    return products


def products_only(compiled, compiler_options: dict | None = None):
    """(call, flops): one jitted program doing only the matrix products of ``compiled`` (same shapes and
    dimension numbers, random float32 operands), to time the products apart from everything else; compile
    it with the ``compiler_options`` ``compiled`` was compiled with, so both use the same product kernels."""
    products = matrix_products(compiled)
    keys = jax.random.split(jax.random.PRNGKey(0), 2 * len(products))
    operands = [(jax.random.normal(keys[2 * i], lhs), jax.random.normal(keys[2 * i + 1], rhs))
                for i, (lhs, rhs, _) in enumerate(products)]
    program = jax.jit(lambda pairs: [jax.lax.dot_general(a, b, numbers)
                                     for (a, b), (_, _, numbers) in zip(pairs, products)],
                      compiler_options=compiler_options)
    # 2 · (every lhs entry) · (the rhs's free entries, neither contracted nor batched)
    flops = sum(2.0 * math.prod(lhs) * math.prod(size for axis, size in enumerate(rhs)
                                                 if axis not in numbers[0][1] + numbers[1][1])
                for lhs, rhs, numbers in products)
    return (lambda: jax.block_until_ready(program(operands))), flops


class Trace:
    """One profiled run of a compiled program: total microseconds and calls per leaf XLA instruction, and
    the JAX operation each instruction came from; summarised per instruction or per JAX operation."""

    def __init__(self, call, compiled):
        """Run ``call()`` (which executes ``compiled``) under the JAX profiler."""
        with tempfile.TemporaryDirectory() as directory:
            jax.profiler.start_trace(directory, create_perfetto_trace=True)
            jax.block_until_ready(call())
            jax.profiler.stop_trace()
            trace = next(Path(directory).rglob("*.json.gz"))
            events = json.load(gzip.open(trace))["traceEvents"]
        self.sources = operation_sources(compiled)
        self.totals, self.calls = Counter(), Counter()
        for event in events:
            name = event.get("name", "")
            if event.get("ph") == "X" and name in self.sources:
                self.totals[name] += event.get("dur", 0.0)
                self.calls[name] += 1

    def operations(self, top: int = 8) -> list[str]:
        """The ``top`` XLA operations by total time, one line each: share of all traced operation time,
        time, calls, operation and the JAX operation it came from."""
        everything = sum(self.totals.values()) or 1.0
        return [f"{100 * microseconds / everything:5.1f} % {microseconds / 1e3:9.2f} ms {self.calls[name]:7d} x "
                f"{name} <- {self.sources[name]}"
                for name, microseconds in self.totals.most_common(top)]

    def by_source(self, top: int = 8) -> list[str]:
        """The traced time summed per JAX operation the XLA operations came from (e.g. all ``dot_general``
        fusions together), the ``top`` ones: share, time and number of XLA operations."""
        by_source, count = Counter(), Counter()
        for name, microseconds in self.totals.items():
            by_source[self.sources[name]] += microseconds
            count[self.sources[name]] += 1
        everything = sum(by_source.values()) or 1.0
        return [f"{100 * microseconds / everything:5.1f} % {microseconds / 1e3:9.2f} ms {count[source]:5d} ops "
                f"<- {source}" for source, microseconds in by_source.most_common(top)]


def trace_summary(call, compiled, top: int = 8) -> list[str]:
    """Run ``call()`` (which executes ``compiled``) under the JAX profiler and return its ``top`` XLA
    operations by total time (:meth:`Trace.operations`)."""
    return Trace(call, compiled).operations(top)
