"""`python -m hyperdecode ...` (and `torchrun ... -m hyperdecode ...`): the `hyperdecode` command."""
import sys

try:
    from .cli import main
    code = main()
except KeyboardInterrupt:  # Ctrl-C while the command's modules still import: no traceback, as later on
    print(file=sys.stderr)
    code = 130
sys.exit(code)
