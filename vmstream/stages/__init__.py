"""The pipeline's stages: sources, decoding, sampling, segmenting, inference, sinks.

Each stage is a plain class with one obvious method: an iterator in, an iterator out.
"""
