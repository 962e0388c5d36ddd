"""Tensors in, tensors out: frame operators and the registry that builds them.

Nothing in this package knows about files, Ray or HTTP.
"""
