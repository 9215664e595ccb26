"""Builds the optional native cast kernel (codec/_fastcast.c); everything else is in
pyproject.toml. The kernel is a plain shared library loaded with ctypes, not a Python
module. `optional=True`: where it cannot be compiled, the install goes on and the casts
use torch or ml_dtypes instead (codec/_precision.py)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tensorwire.codec._fastcast",
            sources=["src/tensorwire/codec/_fastcast.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-fvisibility=hidden"],
            libraries=["pthread"],
            optional=True,
        )
    ]
)
