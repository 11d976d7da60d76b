"""The tags of the shift table's rows: which defaults each row was measured with, and
whether that is today's (``shift.py`` marks the others †). Split out of
``benchmarks/shift.py``, which re-exports every name."""

from __future__ import annotations

#: The defaults the rows are measured with: when they were last changed (the base
#: models' reference energies refitted, ``mlipuq.train``'s default, with the held-out
#: structure covariance for latent distance and the evidential head, whose term keeps a
#: tenth of the held-out variance). Rows without it are from earlier defaults, marked †
#: in the tables: the refit changes every wrapper's energies (``current``).
DEFAULTS = "2026-12-04, refitted base models"
#: Wrappers whose own defaults changed after ``DEFAULTS``, and the tag of their rows since:
#: the evidential head reports the larger of its NIG and its term's variances (a round on
#: 21 fits, docs/shift.md). Its rows tagged ``DEFAULTS`` are from the joint sum, marked †.
WRAPPER_DEFAULTS = {"EvidentialHead": "2026-12-04, evidential larger of two variances"}
#: Earlier defaults, newest first (the rows they tag are kept, marked †): LLPR's energy
#: widening chosen on nine systems; the shallow ensemble's, on six with reproducible
#: heads; the powers chosen on six systems; on four, with the composition drift.
EARLIER_DEFAULTS = ("2026-12-04, nine systems", "2026-12-03, shallow energies",
                    "2026-12-02, six systems", "2026-12-02")

#: Since 2026-12-05 the EMT systems' calibration data carry EMT's stress
#: (``shift_data.with_emt_stress``, as DFT data of periodic cells would) and ``calibrate``
#: fits the strain term (``mlipuq.calibration.strain``): every wrapper's rows of those
#: systems carry this tag. The molecules' rows keep theirs: without a periodic cell
#: there is no stress label and no strain term, so nothing of theirs changed.
STRAIN_TERM = "2026-12-05, strain term"
MOLECULES = ("ethanol", "acac")
#: Wrappers whose own defaults changed after ``STRAIN_TERM``, and the tag of their rows
#: on every system since: the shallow ensemble's energies are the larger of the heads'
#: and a latent-distance term's variance, the evidential head's term chooses its
#: held-out covariance on both halves of val (two rounds on 25 fits, docs/shift.md);
#: then the evidential head's widening reads its term's own range and its energies get a
#: Student-t (two more rounds); then latent distance's energies get the Student-t too,
#: and the head's and the shallow ensemble's forces are widened by r ** 1, the deep
#: ensemble's by r ** 0.75; then (2026-12-06) the shallow ensemble's terms read every
#: layer's features, its stds widened by r ** 0.5, and the evidential head's term too,
#: its forces widened by r ** 0.5; then latent distance's own distances (alone and
#: combined with another wrapper), its forces widened by r ** 0.5 there too; then the
#: energies of latent distance and the evidential head widened by r ** 0.75 with every
#: layer's features (ENERGY_WIDENING); then LLPR got a latent-distance term of its own,
#: fitted on val (LLPR_TERM; its rows before are LLPR alone, "LastLayerLaplace (alone)"
#: since); then (2026-12-07) the deep ensemble got its own (DEEP_TERM; its rows before
#: are the members alone, "DeepEnsemble (3, members alone, before)" since).
#: Their rows tagged before are from the earlier defaults, marked † (the latent wrappers'
#: rows of every layer's features with the energies' r ** 1: "2026-12-06, latent
#: all-layers features").
ENERGY_WIDENING = "2026-12-06, all-layers energies widened r^0.75"
LLPR_TERM = "2026-12-06, LLPR latent term"
DEEP_TERM = "2026-12-07, deep latent term"
LATER_DEFAULTS = {"LastLayerLaplace": LLPR_TERM,
                  "ShallowEnsemble": "2026-12-06, shallow all-layers features",
                  "EvidentialHead": ENERGY_WIDENING,
                  "LatentDistance": ENERGY_WIDENING, "LatentDistance + LLPR": ENERGY_WIDENING,
                  "LatentDistance + ShallowEnsemble": ENERGY_WIDENING,
                  "LatentDistance + ShallowEnsemble (committee energies)": ENERGY_WIDENING,
                  "LatentDistance + DeepEnsemble (3)": ENERGY_WIDENING,
                  "DeepEnsemble (3)": DEEP_TERM}


def defaults_of(wrapper: str, system: str | None = None) -> str:
    """The tag of rows measured with ``wrapper``'s defaults of today on ``system``
    (None: a molecule's)."""
    if wrapper in LATER_DEFAULTS:
        return LATER_DEFAULTS[wrapper]
    if system is not None and system not in MOLECULES:
        return STRAIN_TERM
    return WRAPPER_DEFAULTS.get(wrapper, DEFAULTS)


def current(row: dict) -> bool:
    """Whether ``row`` was measured with today's defaults (``defaults_of`` its wrapper
    and system)."""
    return row.get("defaults") == defaults_of(row["wrapper"], row.get("system"))
