"""Adversaries defined outside the package, loaded as ``custom_adversary:Class``."""

import os

import torch

from peers.behaviours import Behaviour


class Zeroes(Behaviour):
    """Sends an all-zero update every window: present, valid, and useless."""

    name = "zeroes"

    def pseudo_gradient(self, ctx):
        return {n: torch.zeros_like(p) for n, p in ctx.model.named_parameters()}


class Crasher(Behaviour):
    """Trains honestly in window 0, then its process dies (exit status 3)."""

    name = "crasher"

    def pseudo_gradient(self, ctx):
        if ctx.window >= 1:
            os._exit(3)
        return super().pseudo_gradient(ctx)
