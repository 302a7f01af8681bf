"""The company's greeting, as a package on its index."""


def greeting(name):
    return f"Hello, {name}!"
