"""`python -m hyperdecode ...` (and `torchrun ... -m hyperdecode ...`): the `hyperdecode` command."""
import sys

from .cli import main

sys.exit(main())
