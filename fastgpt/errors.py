"""UserError, the one exception of problems a user can cause. It imports nothing of fastgpt, so the
modules that raise it (files, data, metrics, checkpoints) load neither the op layer nor the
compiled extension."""


class UserError(Exception):
    """A problem with the user's input: reported as one line naming the problem and the fix (the
    tools print `error: <it>` and exit 2, fastgpt.cli.run_cli; the Python API raises it)."""
