"""Errors a user can cause, and the command-line boundary that reports them."""
import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """A problem with the user's input: reported as one line naming the problem and the fix."""


def run_cli(main: Callable[[], None]) -> NoReturn:
    """Run a command-line entry point: a UserError becomes `error: ...` on stderr and exit code 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(0)
