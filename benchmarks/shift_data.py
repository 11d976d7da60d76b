"""The data of ``benchmarks/shift.py``: per system, training, calibration and test sets,
the shifts fixed by rules before any method is run (see that script's docstring).

Each builder takes ``quick`` (smaller sets for a smoke run) and returns
``(train, val, tests)``, ``tests`` mapping a split name to a dataset, the
in-distribution split first (its name starts with "in distribution").
"""

from __future__ import annotations

import numpy as np
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from mlipuq import datasets
from mlipuq.data import AtomsDataset, concatenate

#: The share of the molecular frames in each tail.
TAIL = 0.12


def emt_stress(atoms) -> np.ndarray:
    """EMT's stress (3, 3) of ``atoms``, eV/Å³ (the EMT sets label energies and forces)."""
    copy = atoms.copy()
    copy.calc = EMT()
    return copy.get_stress(voigt=False)


def with_emt_stress(dataset: AtomsDataset) -> AtomsDataset:
    """``dataset`` with EMT's stress beside each structure's energy and forces, as DFT
    codes write for periodic cells: ``calibrate`` then measures the mean model's
    stress error (the strain term, :mod:`mlipuq.calibration.strain`; since 2026-12-05)."""
    out = []
    for atoms in dataset:
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy(),
                                          forces=atoms.get_forces(), stress=emt_stress(atoms))
        out.append(copy)
    return AtomsDataset(out)


def emt_sets(elements, temperatures: tuple, seed: int, shifts: dict, quick: bool) -> tuple:
    """EMT bulk at ``temperatures`` (250 structures, 120 with ``quick``) split into
    train / val / in-distribution test (0.6 / 0.2 / 0.2), ``val`` with EMT's stress
    (:func:`with_emt_stress`), and one EMT test set of 40
    (30) structures per entry of ``shifts``, ``name: (elements, kind, temperature,
    seed)``. The in-distribution split is named after ``temperatures``."""
    n = 30 if quick else 40
    data = datasets.emt(elements, n_structures=120 if quick else 250,
                        temperatures=temperatures, kinds=("bulk",), seed=seed)
    train, val, test = data.split([0.6, 0.2, 0.2], seed=0)
    val = with_emt_stress(val)
    tests = {f"in distribution ({'/'.join(str(t) for t in temperatures)} K)": test}
    for name, (shifted, kind, temperature, shift_seed) in shifts.items():
        tests[name] = datasets.emt(shifted, n_structures=n, temperatures=(temperature,),
                                   kinds=(kind,), seed=shift_seed)
    return train, val, tests


def copper_sets(quick: bool) -> tuple[AtomsDataset, AtomsDataset, dict]:
    cu = ("Cu",)
    shifts = {f"bulk {t} K": (cu, "bulk", t, 22 + t) for t in (600, 900, 1500)}
    shifts.update({f"{kind} 300 K": (cu, kind, 300, 23)
                   for kind in ("vacancy", "surface", "strained")})
    return emt_sets(cu, (300,), 21, shifts, quick)


def hydroxyl_torsion(atoms) -> float:
    """H–O–C–C dihedral (degrees) of ethanol: O is the only oxygen, the hydroxyl H
    its nearest hydrogen, the first C its nearest carbon, the second C the other."""
    sym = np.array(atoms.get_chemical_symbols())
    o = int(np.flatnonzero(sym == "O")[0])
    d = atoms.get_all_distances()[o]
    hs, cs = np.flatnonzero(sym == "H"), np.flatnonzero(sym == "C")
    h = int(hs[np.argmin(d[hs])])
    c1 = int(cs[np.argmin(d[cs])])
    c2 = int(cs[cs != c1][0])
    return float(atoms.get_dihedral(h, o, c1, c2))


def proton_asymmetry(atoms) -> float:
    """|d(O–H) − d(O'–H)| (Å) of acetylacetone's enol proton, the hydrogen nearest to
    an oxygen: 0 with the proton midway between the two oxygens."""
    sym = np.array(atoms.get_chemical_symbols())
    o, hs = np.flatnonzero(sym == "O"), np.flatnonzero(sym == "H")
    d = atoms.get_all_distances()
    h = int(hs[np.argmin(d[np.ix_(o, hs)].min(axis=0))])
    return float(abs(d[o[0], h] - d[o[1], h]))


def molecule_sets(pool: AtomsDataset, coordinate: tuple, sizes: tuple) -> tuple:
    """Tails of ``pool`` (highest per-atom energy, largest force component, and the
    smallest values of ``coordinate`` = (name, values)) as test sets; train / val /
    in-distribution test of ``sizes`` drawn from the other frames."""
    energy = pool.energies / pool.n_atoms
    fmax = np.array([np.abs(a.get_forces()).max() for a in pool])
    n_tail = int(TAIL * len(pool))
    tails = {
        "highest energy": np.argsort(-energy)[:n_tail],
        "largest forces": np.argsort(-fmax)[:n_tail],
        coordinate[0]: np.argsort(coordinate[1])[:n_tail],
    }
    held = set(np.concatenate(list(tails.values())).tolist())
    rest = AtomsDataset([pool[i] for i in range(len(pool)) if i not in held])
    if len(rest) < sum(sizes):
        raise ValueError(f"{len(rest)} frames outside the tails, {sum(sizes)} needed")
    rest = rest[np.random.default_rng(0).permutation(len(rest))[: sum(sizes)]]
    train, val, test = rest[: sizes[0]], rest[sizes[0]:sizes[0] + sizes[1]], rest[-sizes[2]:]
    tests = {"in distribution": test}
    for name, idx in tails.items():
        tests[name] = AtomsDataset([pool[int(i)] for i in idx])
    return train, val, tests


def ethanol_sets(quick: bool) -> tuple[AtomsDataset, AtomsDataset, dict]:
    pool = concatenate([datasets.ethanol(s) for s in ("train", "val", "test")])
    torsion = np.array([abs(((hydroxyl_torsion(a) + 180.0) % 360.0) - 180.0) for a in pool])
    return molecule_sets(pool, ("cis hydroxyl torsion", torsion),
                         (300, 100, 150) if quick else (600, 200, 300))


def acac_sets(quick: bool) -> tuple[AtomsDataset, AtomsDataset, dict]:
    pool = concatenate([datasets.acac(s) for s in ("train", "val", "test")])
    shared = np.array([proton_asymmetry(a) for a in pool])
    return molecule_sets(pool, ("shared enol proton", shared),
                         (200, 80, 120) if quick else (400, 130, 200))


def alloy_sets(quick: bool) -> tuple[AtomsDataset, AtomsDataset, dict]:
    """EMT Cu₃Au (random fcc alloy, 24 Cu and 8 Au in every 32-atom cell, so the
    training compositions leave the per-species reference energies undetermined):
    train and calibrate on 300 K bulk; shifts: 900 K bulk, the equiatomic alloy
    CuAu (another stoichiometry and lattice constant), vacancy clusters and
    (111) surfaces at 300 K. Added after every default was chosen, run once."""
    cu3au = {"Cu": 0.75, "Au": 0.25}
    return emt_sets(cu3au, (300,), 31, {
        "bulk 900 K": (cu3au, "bulk", 900, 32),
        "CuAu 300 K": ({"Cu": 0.5, "Au": 0.5}, "bulk", 300, 33),
        "vacancy clusters 300 K": (cu3au, "vacancy_cluster", 300, 34),
        "surface 300 K": (cu3au, "surface", 300, 35),
    }, quick)


def held_out_alloy_sets(alloy: dict, temperatures: tuple, hot: int, other: tuple,
                        seed: int, quick: bool) -> tuple:
    """EMT ``alloy`` trained and calibrated on bulk at ``temperatures`` (low, high);
    shifts: bulk at ``hot`` K, vacancies at the high temperature, (111) surfaces and
    strained cells at 300 K, and the alloy ``other`` = (name, composition) at 300 K
    (seeds ``seed`` + 1 … 5)."""
    high = temperatures[-1]
    return emt_sets(alloy, temperatures, seed, {
        f"bulk {hot} K": (alloy, "bulk", hot, seed + 1),
        f"vacancy {high} K": (alloy, "vacancy", high, seed + 2),
        "surface 300 K": (alloy, "surface", 300, seed + 3),
        "strained 300 K": (alloy, "strained", 300, seed + 4),
        f"{other[0]} 300 K": (other[1], "bulk", 300, seed + 5),
    }, quick)


def agpd_sets(quick: bool) -> tuple[AtomsDataset, AtomsDataset, dict]:
    """EMT AgPd (random equiatomic fcc alloy): train and calibrate on bulk at 300 and
    600 K; shifts: 1200 K bulk, vacancies at 600 K, (111) surfaces and strained cells
    at 300 K, and the Ag-rich alloy Ag₃Pd at 300 K. Held out while the widening's
    powers were chosen, run once after (``HELD_OUT``)."""
    return held_out_alloy_sets({"Ag": 0.5, "Pd": 0.5}, (300, 600), 1200,
                               ("Ag3Pd", {"Ag": 0.75, "Pd": 0.25}), 41, quick)


def ptni_sets(quick: bool) -> tuple[AtomsDataset, AtomsDataset, dict]:
    """EMT Pt₃Ni (random fcc alloy, 24 Pt and 8 Ni per cell): train and calibrate on
    bulk at 300 and 900 K; shifts: 1500 K bulk, vacancies at 900 K, (111) surfaces
    and strained cells at 300 K, and the equiatomic alloy PtNi at 300 K. Its rules
    fixed on 2026-12-02, after the composition drift was added (chosen on Cu₃Au
    and looked at on AgPd); held out from every choice, run once (``HELD_OUT``)."""
    return held_out_alloy_sets({"Pt": 0.75, "Ni": 0.25}, (300, 900), 1500,
                               ("PtNi", {"Pt": 0.5, "Ni": 0.5}), 51, quick)


def platinum_sets(quick: bool) -> tuple[AtomsDataset, AtomsDataset, dict]:
    """EMT Pt (one element): train and calibrate on bulk at 300 and 600 K; shifts:
    1200 K bulk, vacancies at 600 K, (111) surfaces and strained cells at 300 K. Its
    rules fixed on 2026-12-02; held out from the widening's powers chosen on six
    systems (AgPd and Pt₃Ni seen), run once after (``HELD_OUT``)."""
    pt = ("Pt",)
    return emt_sets(pt, (300, 600), 61, {
        "bulk 1200 K": (pt, "bulk", 1200, 62),
        "vacancy 600 K": (pt, "vacancy", 600, 63),
        "surface 300 K": (pt, "surface", 300, 64),
        "strained 300 K": (pt, "strained", 300, 65),
    }, quick)


def nial_sets(quick: bool) -> tuple[AtomsDataset, AtomsDataset, dict]:
    """EMT Ni₃Al (random fcc alloy, 24 Ni and 8 Al per cell): train and calibrate on
    bulk at 300 and 900 K; shifts: 1500 K bulk, vacancies at 900 K, (111) surfaces
    and strained cells at 300 K, and the equiatomic alloy NiAl at 300 K. Its rules
    fixed on 2026-12-02 before any wrapper saw it, after the deep ensemble's members
    were aligned along the undetermined directions; held out from every choice so
    far, run once (``HELD_OUT``)."""
    return held_out_alloy_sets({"Ni": 0.75, "Al": 0.25}, (300, 900), 1500,
                               ("NiAl", {"Ni": 0.5, "Al": 0.5}), 71, quick)


def cupd_sets(quick: bool) -> tuple[AtomsDataset, AtomsDataset, dict]:
    """EMT Cu₃Pd (random fcc alloy, 24 Cu and 8 Pd per cell): train and calibrate on
    bulk at 300 and 900 K; shifts: 1500 K bulk, vacancies at 900 K, (111) surfaces
    and strained cells at 300 K, and the equiatomic alloy CuPd at 300 K. Its rules
    fixed on 2026-12-02 before any wrapper saw it, to check the round on eight
    systems of LLPR's posterior mean (docs/shift.md); that round did not qualify.
    Run once on 2026-12-03 with every default as it stood (the shallow ensemble's
    energy power chosen again on six systems included), no choice made on it
    (``HELD_OUT``)."""
    return held_out_alloy_sets({"Cu": 0.75, "Pd": 0.25}, (300, 900), 1500,
                               ("CuPd", {"Cu": 0.5, "Pd": 0.5}), 81, quick)


def nicu_sets(quick: bool) -> tuple[AtomsDataset, AtomsDataset, dict]:
    """EMT Ni₃Cu (random fcc alloy, 24 Ni and 8 Cu per cell): train and calibrate on
    bulk at 300 and 900 K; shifts: 1500 K bulk, vacancies at 900 K, (111) surfaces
    and strained cells at 300 K, and the equiatomic alloy NiCu at 300 K. Its rules
    fixed on 2026-12-03 before Cu₃Pd's run, to replace it: held out from the
    choice on nine systems, run once after it (2026-12-04) with every wrapper, no
    choice made on it (``HELD_OUT``)."""
    return held_out_alloy_sets({"Ni": 0.75, "Cu": 0.25}, (300, 900), 1500,
                               ("NiCu", {"Ni": 0.5, "Cu": 0.5}), 91, quick)


def aupd_sets(quick: bool) -> tuple[AtomsDataset, AtomsDataset, dict]:
    """EMT Au₃Pd (random fcc alloy, 24 Au and 8 Pd per cell): train and calibrate on
    bulk at 300 K only (as Cu₃Au: calibration data with little trend between
    structures, where the fit-to-fit spread was widest); shifts: 900 K bulk,
    vacancies, (111) surfaces and strained cells at 300 K, and the equiatomic alloy
    AuPd at 300 K. Its rules fixed on 2026-12-04 after the fit-to-fit spread was
    measured, before any wrapper saw it: held out from every choice, run once on
    three base models (docs/shift.md, "Held out, then run once") (``HELD_OUT``)."""
    return held_out_alloy_sets({"Au": 0.75, "Pd": 0.25}, (300,), 900,
                               ("AuPd", {"Au": 0.5, "Pd": 0.5}), 101, quick)


def agau_sets(quick: bool) -> tuple[AtomsDataset, AtomsDataset, dict]:
    """EMT Ag₃Au (random fcc alloy, 24 Ag and 8 Au per cell): train and calibrate on
    bulk at 300 and 900 K; shifts: 1500 K bulk, vacancies at 900 K, (111) surfaces
    and strained cells at 300 K, and the equiatomic alloy AgAu at 300 K. Its rules
    fixed on 2026-12-04 during the round on refitted base models (docs/shift.md),
    before any wrapper saw it: held out from that round, run once to check its
    candidate pair (``HELD_OUT``)."""
    return held_out_alloy_sets({"Ag": 0.75, "Au": 0.25}, (300, 900), 1500,
                               ("AgAu", {"Ag": 0.5, "Au": 0.5}), 111, quick)


def training_recipe(train: AtomsDataset) -> tuple[dict, tuple]:
    """The composition ``{element: fraction}`` of ``train``'s first structure (the EMT
    sets hold one stoichiometry per cell) and the sorted MD temperatures of its
    structures (their ``info["temperature"]``)."""
    symbols = train[0].get_chemical_symbols()
    composition = {s: symbols.count(s) / len(symbols) for s in dict.fromkeys(symbols)}
    temperatures = tuple(sorted({float(a.info["temperature"]) for a in train}))
    return composition, temperatures


def unseen_recipes(temperatures: tuple) -> dict:
    """Shift kinds no round saw (docs/shift.md, "Shift kinds no round saw", fixed
    before their run), ``name: (kind, temperature, size)`` for an EMT system trained
    at ``temperatures`` (sorted): bulk in 108-atom cells (``size=3``) at the lowest,
    and (111) surfaces, vacancy clusters and strained cells at 1.5 times the highest."""
    low, hot = temperatures[0], 1.5 * temperatures[-1]
    return {f"bulk 108 atoms {low:g} K": ("bulk", low, 3),
            f"surface {hot:g} K": ("surface", hot, 2),
            f"vacancy clusters {hot:g} K": ("vacancy_cluster", hot, 2),
            f"strained {hot:g} K": ("strained", hot, 2)}


def unseen_shifts(train: AtomsDataset, seed: int, quick: bool) -> dict:
    """The EMT test sets of :func:`unseen_recipes` for the system trained on ``train``
    (its composition and temperatures), 40 structures each (30 with ``quick``), seeds
    ``seed`` to ``seed + 3``."""
    composition, temperatures = training_recipe(train)
    return {name: datasets.emt(composition, n_structures=30 if quick else 40,
                               temperatures=(t,), kinds=(kind,), seed=seed + k, size=size)
            for k, (name, (kind, t, size)) in enumerate(unseen_recipes(temperatures).items())}


def unseen_frontier(train: AtomsDataset, seed: int, n: int) -> tuple[str, AtomsDataset]:
    """``(name, structures)``: ``n`` labelled cells of the 108-atom bulk kind of
    :func:`unseen_recipes` (the lowest training temperature), from an MD run of their
    own (seed ``seed + 4``; the test sets use ``seed`` to ``seed + 3``), to join the
    calibration data (``shift.py --unseen --frontier n``)."""
    composition, temperatures = training_recipe(train)
    name, (kind, t, size) = next(iter(unseen_recipes(temperatures).items()))
    return name, datasets.emt(composition, n_structures=n, temperatures=(t,), kinds=(kind,),
                              seed=seed + 4, size=size)


#: The systems in the order they were added: acac and the alloy after every default
#: had been chosen on the first two (held out then; the alloy run once).
PART_SETS = {"copper": copper_sets, "ethanol": ethanol_sets, "acac": acac_sets,
             "alloy": alloy_sets}
#: Systems held out from choices of defaults, run once after them (AgPd: the widening's
#: powers on ``PART_SETS``; Pt₃Ni: the composition drift; Pt: the powers on six
#: systems; Ni₃Al: all of them and the deep ensemble's alignment; Cu₃Pd: every default
#: as of 2026-12-03; Ni₃Cu: the powers on nine systems; Au₃Pd: everything as of
#: 2026-12-04, run once the same day; Ag₃Au: the round on refitted base models); run
#: only with ``--parts``.
HELD_OUT = {"agpd": agpd_sets, "ptni": ptni_sets, "platinum": platinum_sets,
            "nial": nial_sets, "cupd": cupd_sets, "nicu": nicu_sets, "aupd": aupd_sets,
            "agau": agau_sets}
#: The EMT systems :func:`unseen_shifts` serves, each with its seed (``shift.py --unseen``).
UNSEEN_SEEDS = {part: 1000 + 10 * k for k, part in enumerate(
    ("copper", "alloy", "agpd", "ptni", "platinum", "nial", "cupd", "nicu", "aupd", "agau"))}
