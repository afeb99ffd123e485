"""benchmarks/roofline.py: which JAX operation each XLA instruction of a profiled program is charged to."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import roofline


def test_plain_dots_are_marked_untimed_and_fusions_keep_their_jax_operation():
    # a weight-gradient product (contraction over the rows of both operands) that XLA leaves unfused,
    # followed by an element-wise multiply
    def weight_gradient(x, g):
        return jax.lax.dot_general(x, g, (((0,), (0,)), ((), ()))) * 2.0

    x = jnp.ones((64, 8))
    compiled = jax.jit(weight_gradient).lower(x, x).compile()
    text = compiled.as_text()
    sources = roofline.operation_sources(compiled)
    dots = [name for name in sources if f"%{name} = " in text and " dot(" in text.split(f"%{name} = ")[1].split("\n")[0]]
    assert dots and all(sources[name] == roofline.UNTIMED_DOT for name in dots)
    assert "mul" in sources.values()


def test_matrix_products_lists_fused_and_unfused_dots_with_their_dimension_numbers():
    def layer_and_weight_gradient(x, w, g):
        return jnp.tanh(x @ w), jax.lax.dot_general(x, g, (((0,), (0,)), ((), ())))

    x, w, g = jnp.ones((40, 8)), jnp.ones((8, 16)), jnp.ones((40, 16))
    compiled = jax.jit(layer_and_weight_gradient).lower(x, w, g).compile()
    found = sorted(roofline.matrix_products(compiled))
    assert found == sorted([((40, 8), (8, 16), (((1,), (0,)), ((), ()))),
                            ((40, 8), (40, 16), (((0,), (0,)), ((), ())))])
    call, flops = roofline.products_only(compiled)
    assert flops == 2 * 40 * 8 * 16 * 2
    call()  # the products-only program runs
    # the products-only program is compiled with the options it is given (an invalid one fails to compile)
    with pytest.raises(Exception, match="xla_cpu_experimental_ynn_fusion_type"):
        roofline.products_only(compiled, {"xla_cpu_experimental_ynn_fusion_type": "no such fusion type"})[0]()
