"""Greets people, in the company's house style."""

import ctypes
import os

from corp_greeting import greeting

NATIVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native", "libsum.so")


def greet(name):
    return greeting(name)


def total(numbers):
    """The sum of `numbers`, computed by the C library."""
    library = ctypes.CDLL(NATIVE)
    array = (ctypes.c_long * len(numbers))(*numbers)
    return library.sum(array, len(numbers))
