"""Which ``mlipuq fit`` options each method takes (:mod:`mlipuq.fit_cli`): a clear
``ValueError`` naming the flag before anything is fitted."""

from __future__ import annotations

__all__ = ["check_fit_args"]


def check_fit_args(args) -> None:
    """``ValueError`` naming the flag for a combination of ``mlipuq fit`` options that
    the method does not take, or a value out of range."""
    _check_values(args)
    _check_term_flags(args)
    _check_method_flags(args)


def _check_values(args) -> None:
    """Values out of range, calibration options without their method, ``--heads``."""
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.max_time is not None and not args.max_time > 0:
        raise ValueError(f"--max-time must be > 0, got {args.max_time}")
    if args.extrapolation is not None and not args.extrapolation >= 0:
        raise ValueError(f"--extrapolation must be >= 0, got {args.extrapolation}")
    if args.widening_cap not in (None, "none") and not 1 <= args.widening_cap < float("inf"):
        raise ValueError("--widening-cap must be a number >= 1 or 'none', got "
                         f"{args.widening_cap}")
    if args.coverage is not None:
        if args.calibration != "conformal":
            raise ValueError("--coverage applies to --calibration conformal only")
        if not 0 < args.coverage < 1:
            raise ValueError(f"--coverage must be between 0 and 1, got {args.coverage}")
    if args.per_species is not None and args.calibration not in (None, "student_t", "conformal"):
        raise ValueError("--per-species applies to --calibration student_t or conformal "
                         f"(or the default), not {args.calibration}")
    if args.max_dof is not None:
        if args.calibration not in (None, "student_t"):
            raise ValueError("--max-dof applies to --calibration student_t (or the default), "
                             f"not {args.calibration}")
        if not args.max_dof > 1:
            raise ValueError(f"--max-dof must be > 1, got {args.max_dof}")
    if args.heads is not None and args.method != "shallow":
        raise ValueError(f"--heads is a shallow option, not one of fit {args.method}")
    if args.heads is not None and args.heads < 2:
        raise ValueError(f"--heads must be >= 2, got {args.heads}")


def _check_term_flags(args) -> None:
    """The latent-distance options: only with a method (or ``--latent``) that has a term."""
    if args.latent is not None and args.method not in ("llpr", "shallow", "deep"):
        raise ValueError(f"--latent adds a latent distance to llpr, shallow or deep, "
                         f"not to fit {args.method}")
    if args.energy_distance is not None and args.method != "latent":
        raise ValueError(f"--energy-distance is a latent option, not one of fit {args.method}")
    for flag, value in (("--features", args.features), ("--ridge-scale", args.ridge_scale)):
        if value is not None and args.method != "latent" and args.latent is None and (
                args.method not in ("shallow", "evidential", "llpr") or args.score == "none"):
            raise ValueError(f"{flag} is a latent or --latent option, or one of shallow, "
                             "evidential and llpr with their latent-distance term, not one of fit "
                             f"{args.method}" + (" --score none" if args.score == "none"
                                                 else ""))
    if args.structure_covariance is not None and not (
            args.method == "latent" or args.latent == "both"
            or (args.method == "evidential" and args.score != "none")):
        raise ValueError("--structure-covariance is a latent, evidential (with its "
                         f"latent-distance term) or --latent both option, not one of fit "
                         f"{args.method}" + (" --score none" if args.score == "none" else ""))
    if args.distance_combination is not None and (args.method != "evidential"
                                                  or args.score == "none"):
        raise ValueError("--distance-combination is an evidential option (with its "
                         f"latent-distance term), not one of fit {args.method}"
                         + (" --score none" if args.score == "none" else ""))
    for flag in ("energy_combination", "force_combination"):
        if getattr(args, flag) is not None and (args.method not in ("shallow", "llpr")
                                                or args.score == "none" or args.latent):
            raise ValueError(f"--{flag.replace('_', '-')} is a shallow or llpr"
                             " option (with its latent-distance term, without --latent), "
                             f"not one of fit {args.method}"
                             + (" --score none" if args.score == "none" else "")
                             + (" --latent" if args.latent else ""))
    allowed = {"llpr": ("sum", "max"), "shallow": ("max", "none")}.get(args.method, ())
    if args.energy_combination not in (None, *allowed):
        raise ValueError(f"--energy-combination {args.energy_combination} is not one of fit "
                         f"{args.method}'s: {', '.join(allowed)}")
    if args.reference is not None and args.method != "evidential":
        raise ValueError(f"--reference is an evidential option, not one of fit {args.method}")
    if args.reference is not None and args.score == "none":
        raise ValueError("--reference is what the latent-distance term measures to; "
                         "--score none has no such term")
    if args.score == "none" and (args.method not in ("evidential", "shallow", "llpr", "deep")
                                 or args.latent is not None):
        raise ValueError("--score none (no latent-distance term) is an evidential, shallow, "
                         "llpr or deep option, without --latent")


def _check_method_flags(args) -> None:
    """Options of one method given to another (deep, llpr, latent)."""
    if args.recentre is not None and args.method != "deep":
        raise ValueError(f"--recentre is a deep option, not one of fit {args.method}")
    if args.recentre is not None and args.val is None:
        raise ValueError("--recentre fits offsets on --val: give --val")
    if args.members is not None and args.method != "deep":
        raise ValueError(f"--members is a deep option, not one of fit {args.method}")
    if args.method in ("llpr", "latent"):
        given = [name for name in ("epochs", "lr", "patience", "max_time")
                 if getattr(args, name) is not None]
        if given:
            raise ValueError(f"fit {args.method} trains nothing: --" + ", --".join(
                name.replace("_", "-") for name in given) + " do not apply")
    if args.refit_mean and args.method != "llpr":
        raise ValueError(f"--refit-mean is an llpr option, not one of fit {args.method}")
    if len(args.model) > 1 and args.method != "deep":
        raise ValueError(f"fit {args.method} takes one --model, got {len(args.model)}")
    if args.method == "deep":
        if args.members is not None and args.members < 2:
            raise ValueError(f"--members must be >= 2, got {args.members}")
        if len(args.model) > 1 and args.members not in (None, len(args.model)):
            raise ValueError(f"--members {args.members} but {len(args.model)} --model files; "
                             "give one or the other")
