"""Packaging metadata lives in setup.cfg; this file only adds the optional C extension.

``trainer._f16`` is the float16 product for AVX2 and AVX-512 CPUs, and the packed decoding steps'
attention (``trainer/_f16.c``). It is optional: where it cannot be built (no C compiler), the
float16 layers use fbgemm's kernels and attention uses torch's sdpa instead.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("trainer._f16", ["trainer/_f16.c"], extra_compile_args=["-O3"], optional=True)])
