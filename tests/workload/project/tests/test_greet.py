import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import greet


def test_greets_by_name():
    assert greet.greet("Ada") == "Hello, Ada!"


def test_sums_in_c():
    assert greet.total([1, 2, 3, 39]) == 45
