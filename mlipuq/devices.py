"""``--device`` for every subcommand: parse it, and resolve it to this rank's device."""

from __future__ import annotations

import argparse


def device_name(text: str) -> str:
    """argparse type of ``--device``: ``cpu``, ``cuda`` or ``cuda:N``."""
    name = text.strip().lower()
    if name == "cpu" or name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", type=device_name, default="cpu",
        help="cpu or cuda (cuda:N); under torchrun each rank takes GPU LOCAL_RANK",
    )


def resolve_device(name: str):
    """The ``torch.device`` to run on: this rank's (after
    :func:`mlipuq.distributed.init`), else ``name``; ``ValueError`` for CUDA
    without a GPU."""
    import torch

    from mlipuq import distributed as mdist

    if mdist.active():
        return mdist.device()
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)
