"""Video in, video out: probe, chunk, decode, operate, encode, assemble.

This package knows nothing of HTTP or databases; :func:`pipelines.enhance.enhance_video`
is its front door.
"""
