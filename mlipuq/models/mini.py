"""MiniMLIP: the built-in message-passing potential.

A compact PaiNN-style network (Schütt et al., ICML 2021): every atom carries
scalar features ``s`` (F,) and vector features ``v`` (3, F); messages use a
sine radial basis with a smooth cosine cutoff, and updates mix scalars with
the norms and inner products of vectors, so the energy is invariant and the
forces equivariant. Per-atom energies come out of the final linear layer
``readout``: ``eps_i = readout(phi_i)`` with ``phi_i = silu(W s_i)``, so
MiniMLIP satisfies the base-MLIP contract natively.

``MiniMLIP(..., direct_forces=True)`` adds a direct (non-conservative) force
head, like PET's non-conservative variant: ``force_readout``, a linear layer
without bias on the last block's vector features, ``F_i = sum_c w_c v_ic``
(equivariant: the ``v_ic`` rotate with the structure and a bias would not).
Both heads share the backbone; ``force_mode`` picks the one
``forward(forces=True)`` returns (see :mod:`mlipuq.models.base` and
``docs/direct-forces.md``).
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Mapping, Optional, Union

import torch
from torch import nn

from mlipuq.data import Batch
from mlipuq.models.base import MLIP, register


class RadialBasis(nn.Module):
    """``sin(n pi r / rc) / r`` for n = 1..n_rbf, times a cosine cutoff (1/Å)."""

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)
        self.register_buffer("freqs", torch.arange(1, n_rbf + 1) * math.pi / cutoff)

    def envelope(self, r: torch.Tensor) -> torch.Tensor:
        inside = r < self.cutoff
        return torch.where(inside, 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0), 0.0 * r)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return torch.sin(self.freqs.to(r.dtype) * r) / r


class Interaction(nn.Module):
    """PaiNN message block: continuous filters on scalars, vectors and directions."""

    def __init__(self, n_features: int, n_rbf: int):
        super().__init__()
        f = n_features
        self.phi = nn.Sequential(nn.Linear(f, f), nn.SiLU(), nn.Linear(f, 3 * f))
        self.filter = nn.Linear(n_rbf, 3 * f)

    def forward(self, s, v, edge_index, rbf, envelope, unit, norm):
        i, j = edge_index
        x = self.phi(s)[j] * self.filter(rbf) * envelope.unsqueeze(-1)
        ds, dvv, dvs = torch.split(x, s.shape[-1], dim=-1)
        dv = v[j] * dvv.unsqueeze(1) + dvs.unsqueeze(1) * unit.unsqueeze(-1)
        s = s + torch.zeros_like(s).index_add(0, i, ds) * norm
        v = v + torch.zeros_like(v).index_add(0, i, dv) * norm
        return s, v


class Update(nn.Module):
    """PaiNN update block: gated mixing of scalars with vector norms and products."""

    def __init__(self, n_features: int):
        super().__init__()
        f = n_features
        self.U = nn.Linear(f, f, bias=False)
        self.V = nn.Linear(f, f, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * f, f), nn.SiLU(), nn.Linear(f, 3 * f))

    def forward(self, s, v):
        uv, vv = self.U(v), self.V(v)
        vnorm = torch.sqrt((vv * vv).sum(dim=1) + 1e-8)
        a = self.mlp(torch.cat([s, vnorm], dim=-1))
        avv, asv, ass = torch.split(a, s.shape[-1], dim=-1)
        s = s + ass + asv * (uv * vv).sum(dim=1)
        v = v + avv.unsqueeze(1) * uv
        return s, v


@register
class MiniMLIP(MLIP):
    """Built-in invariant message-passing potential (PaiNN-style).

    Parameters
    ----------
    species
        Elements (symbols or atomic numbers) the model knows.
    cutoff
        Interaction cutoff (Å).
    width
        Width of the scalar and vector features of the message passing
        (default 64; ``n_features=`` before, a deprecated keyword now).
    n_interactions
        Number of message/update blocks (2-3 is typical).
    n_rbf
        Number of radial basis functions.
    n_readout_features
        Dimension F of the last-layer features ``phi_i`` that the UQ
        wrappers work with: the model's ``n_features`` attribute, as for
        every :class:`~mlipuq.models.MLIP`.
    avg_num_neighbors
        Messages are divided by this number (typical neighbours within the
        cutoff); :func:`mlipuq.train` sets it from the training data if None.
    atomic_energies
        Per-species reference energies (eV); fitted by the trainer if None.
    seed
        Seed for the weight initialisation (None: torch's global RNG). The
        direct force head is drawn after every other weight, so a model with it
        has the same backbone and energy readout as one without (same seed).
    direct_forces
        Add the direct force head ``force_readout`` (``Linear(width, 1,
        bias=False)`` on the (N, 3, width) vector features of the last block):
        ``has_direct_forces`` is then True and ``forward(direct_forces=True)``
        returns its forces. Default False: no head, the model of before.
    force_mode
        ``"conservative"`` (default: forces are −∂E/∂r by autograd) or
        ``"direct"`` (``forward(forces=True)``, :meth:`compute`, training and
        calculators use the direct head, with no backward pass; needs
        ``direct_forces=True``). Settable later (``model.force_mode = ...``).
    """

    def __init__(
        self,
        species: Iterable[Union[int, str]],
        cutoff: float = 5.0,
        *,
        width: Optional[int] = None,
        n_interactions: int = 3,
        n_rbf: int = 20,
        n_readout_features: int = 32,
        avg_num_neighbors: Optional[float] = None,
        atomic_energies: Optional[Mapping[Union[int, str], float]] = None,
        seed: Optional[int] = None,
        n_features: Optional[int] = None,
        direct_forces: bool = False,
        force_mode: str = "conservative",
    ):
        super().__init__(species, cutoff)
        if not isinstance(direct_forces, bool):
            raise TypeError(f"direct_forces must be a bool, got {type(direct_forces).__name__}")
        width, width_name = _width(width, n_features)
        for name, value in (
            (width_name, width),
            ("n_interactions", n_interactions),
            ("n_rbf", n_rbf),
            ("n_readout_features", n_readout_features),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self._config = {
            "species": list(self.species),
            "cutoff": self.cutoff,
            "width": int(width),
            "n_interactions": int(n_interactions),
            "n_rbf": int(n_rbf),
            "n_readout_features": int(n_readout_features),
        }
        if direct_forces:  # only then: configs (and files) of models without the head unchanged
            self._config["direct_forces"] = True
        self.avg_num_neighbors = None if avg_num_neighbors is None else float(avg_num_neighbors)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(int(seed))
            f = int(width)
            self.embedding = nn.Embedding(len(self.species), f)
            self.rbf = RadialBasis(int(n_rbf), self.cutoff)
            self.interactions = nn.ModuleList(
                Interaction(f, int(n_rbf)) for _ in range(int(n_interactions))
            )
            self.updates = nn.ModuleList(Update(f) for _ in range(int(n_interactions)))
            self.hidden = nn.Linear(f, int(n_readout_features))
            self.activation = nn.SiLU()
            self.readout = nn.Linear(int(n_readout_features), 1)
            nn.init.normal_(self.readout.weight, std=0.01)
            nn.init.zeros_(self.readout.bias)
            if direct_forces:  # drawn last: the other weights are those of a model without it
                self.force_readout = nn.Linear(f, 1, bias=False)
                nn.init.normal_(self.force_readout.weight, std=0.01)
                self.force_readout_name = "force_readout"
        self.force_mode = force_mode
        if atomic_energies is not None:
            self.set_atomic_energies(atomic_energies)

    @property
    def width(self) -> int:
        """Width of the message-passing features (the ``width`` argument)."""
        return self._config["width"]

    def config(self) -> dict:
        config = dict(self._config)
        if self.has_direct_forces:
            config["force_mode"] = self.force_mode
        return config

    @classmethod
    def from_payload(cls, payload: dict, **kwargs) -> "MiniMLIP":
        config = dict(payload["config"])
        if "n_features" in config and "width" not in config:  # files saved before the rename
            config["width"] = config.pop("n_features")
        return super().from_payload({**payload, "config": config}, **kwargs)

    def get_extra_state(self):
        state = super().get_extra_state()
        state["avg_num_neighbors"] = self.avg_num_neighbors
        return state

    def set_extra_state(self, state) -> None:
        super().set_extra_state(state)
        self.avg_num_neighbors = state["avg_num_neighbors"]

    def layer_modules(self) -> list[nn.Module]:
        """The message-passing layers, in order, each returning ``(s, v)`` whose ``s``
        (N, width) are the atoms' invariant features after it (optional contract:
        :class:`~mlipuq.uq.LatentDistance` ``features="all_layers"`` reads them)."""
        return list(self.updates)

    def per_atom_energy(self, batch: Batch) -> torch.Tensor:
        species = self.species_index(batch)
        vectors = batch.edge_vectors()
        r = torch.linalg.norm(vectors, dim=-1)
        unit = vectors / r.unsqueeze(-1)
        rbf = self.rbf(r)
        envelope = self.rbf.envelope(r)
        norm = 1.0 / (self.avg_num_neighbors or 1.0)
        s = self.embedding(species)
        v = torch.zeros(s.shape[0], 3, s.shape[1], dtype=s.dtype, device=s.device)
        for interaction, update in zip(self.interactions, self.updates):
            s, v = interaction(s, v, batch.edge_index, rbf, envelope, unit, norm)
            s, v = update(s, v)
        if self.has_direct_forces:  # (N, 3, width) -> (N, 3, 1), captured by MLIP.forward
            self.force_readout(v)
        phi = self.activation(self.hidden(s))
        return self.readout(phi).squeeze(-1)


def _width(width: Optional[int], n_features: Optional[int]) -> tuple[int, str]:
    """The message-passing width and the keyword it came from (``n_features`` is deprecated)."""
    if n_features is None:
        return (64 if width is None else width), "width"
    if width is not None:
        raise TypeError("pass width= only (n_features= is its deprecated name)")
    warnings.warn(
        "MiniMLIP(n_features=...) is deprecated and will be removed in the next release: "
        "it sets the message-passing width, so pass width=...; the model's n_features "
        "attribute is the readout feature dimension (n_readout_features)",
        DeprecationWarning, stacklevel=3,
    )
    return n_features, "n_features"
