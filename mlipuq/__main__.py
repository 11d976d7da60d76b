"""``python -m mlipuq ...``: the ``mlipuq`` command (:func:`mlipuq.cli.main`).

Also the entry point under torchrun: ``torchrun --nproc-per-node N -m mlipuq predict ...``.
"""

import sys

from mlipuq.cli import main

if __name__ == "__main__":
    sys.exit(main())
