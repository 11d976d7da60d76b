"""The ``mlipuq ipi-driver`` subcommand: serve a saved UQ wrapper to i-PI.

``mlipuq ipi-driver --model W.pt --template S.xyz --address ADDR [--unix]
[--port P] [--device cpu]`` loads the wrapper (:func:`mlipuq.uq.load`),
connects to a running ``i-pi input.xml`` (Unix socket
``/tmp/ipi_ADDR`` with ``--unix``, else TCP ``ADDR:P``) and answers its
requests with :class:`mlipuq.engines.ipi.MLIPUQDriver` until i-PI sends EXIT;
it then prints how many structures it evaluated. The template gives the
element symbols in i-PI's atom order and the periodicity. Retries the
connection for ``--wait`` seconds, so it may be started before i-PI is ready.

``mlipuq/cli.py`` calls :func:`add_parser` to register the subcommand; errors
are raised and reported by :func:`mlipuq.cli.main` (one line, exit status 2).
Imports only what ``--help`` needs; torch and i-PI load in :func:`run`.
"""

from __future__ import annotations

import argparse

from mlipuq.devices import add_device_option

#: Default TCP port (kept equal to :data:`mlipuq.engines.ipi.DEFAULT_PORT`).
DEFAULT_PORT = 31415


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ipi-driver`` on an ``argparse`` subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "ipi-driver",
        help="serve a saved UQ wrapper to i-PI (socket client, committee in the extras)",
        description="Connect to a running i-PI server and compute energies, forces, virials "
        "and their committee (JSON extras for <ffcommittee> with <parse_json>) with a saved "
        "UQ wrapper, until i-PI ends the simulation.",
    )
    parser.add_argument("--model", "-m", required=True, metavar="W.pt",
                        help="UQ wrapper saved with .save()")
    parser.add_argument("--template", "-t", required=True, metavar="S.xyz",
                        help="structure file (first frame): element symbols in i-PI's atom "
                             "order and periodicity (i-PI's init.xyz works for molecules)")
    parser.add_argument("--address", "-a", required=True, metavar="ADDR",
                        help="i-PI's <address>: the Unix socket name (with --unix) or host name")
    parser.add_argument("--unix", "-u", action="store_true",
                        help="Unix-domain socket (<ffsocket mode='unix'>) instead of TCP")
    parser.add_argument("--port", "-p", type=int, default=DEFAULT_PORT,
                        help="TCP port (<ffsocket mode='inet'>; ignored with --unix)")
    parser.add_argument("--sockets-prefix", "-S", default="/tmp/ipi_", metavar="PREFIX",
                        help="prefix of the Unix socket path (i-PI's sockets_prefix)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="precision of the evaluation")
    parser.add_argument("--no-calibration", action="store_true",
                        help="ignore the wrapper's recalibration")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="structures per forward pass when i-PI sends batches")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds to retry connecting while i-PI starts")
    add_device_option(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``mlipuq ipi-driver``; returns 0 when i-PI has ended the simulation.
    Bad input raises (``FileNotFoundError``, ``ValueError`` /
    :class:`~mlipuq.engines.ipi.IPIDriverError`); :func:`mlipuq.cli.main` reports it."""
    from mlipuq.devices import resolve_device
    from mlipuq.engines.ipi import serve

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.wait < 0:
        raise ValueError(f"--wait must be >= 0 s, got {args.wait:g}")
    device = resolve_device(args.device)
    where = (f"{args.sockets_prefix}{args.address}" if args.unix
             else f"{args.address}:{args.port}")
    print(f"# mlipuq ipi-driver: {args.model} on {device}, connecting to i-PI at {where}",
          flush=True)
    driver = serve(args.model, args.template, args.address, unix=args.unix, port=args.port,
                   sockets_prefix=args.sockets_prefix, device=device, dtype=args.dtype,
                   calibrated=not args.no_calibration, batch_size=args.batch_size,
                   wait=args.wait)
    print(f"# i-PI ended the simulation: {driver.n_structures} structures evaluated in "
          f"{driver.n_calls} requests", flush=True)
    return 0
