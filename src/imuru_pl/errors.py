"""Errors a user can cause. Entry points turn them into one sentence and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user (a path, an image, a text, a config value, a checkpoint).

    The message is one sentence that names the offending input; no traceback is shown for it.
    """
