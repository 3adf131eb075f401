"""Tensor operations shared by losses and jobs (box coding and anchor matching)."""

from losscli.ops.boxcoder import build_targets, decode, encode, match

__all__ = ["build_targets", "decode", "encode", "match"]
