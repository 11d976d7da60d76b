"""Base models named on the command line: a saved file, or an external MLIP by name.

``load_model_spec("m.pt")`` loads a model saved by mlipuq (:func:`mlipuq.models.load`);
``"sevennet:7net-0"`` wraps a SevenNet checkpoint shipped in the ``sevenn`` wheel,
``"chgnet:"`` (or ``"chgnet:0.3.0"``) the pretrained CHGNet, ``"mace:FILE"`` a
user's MACE model file. The external ones need their extras
(``mlipuq[sevennet]``, ``[chgnet]``, ``[mace]``); nothing is downloaded.
"""

from __future__ import annotations

import os

#: prefixes of external models, and the extra that installs each
EXTERNAL = {"sevennet": "sevennet", "chgnet": "chgnet", "mace": "mace"}


def load_model_spec(spec: str):
    """The base MLIP that ``spec`` names (see the module notes)."""
    text = os.fspath(spec)
    prefix, sep, rest = text.partition(":")
    if not sep or prefix not in EXTERNAL or os.path.exists(text):
        from mlipuq.models import load

        return load(text)
    try:
        if prefix == "sevennet":
            from mlipuq.models import from_sevennet

            return from_sevennet(rest or "7net-0")
        if prefix == "chgnet":
            from mlipuq.models import from_chgnet

            return from_chgnet(rest or "0.3.0")
        if not rest:
            raise ValueError("mace:FILE needs the path of a MACE model file")
        from mlipuq.models import from_mace

        return from_mace(rest)
    except ImportError as exc:
        raise ValueError(f"--model {text}: {exc} (install the {EXTERNAL[prefix]!r} extra: "
                         f'pip install "mlipuq[{EXTERNAL[prefix]}]" -c constraints.txt)') from None
