"""The one exception type for mistakes a user can fix (bad file, bad flag).

Command-line entry points catch it and print ``error: <message>`` on one line
with exit status 2, instead of a traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message says what and how to fix it."""


class TrainingDiverged(UserError):
    """The training loss (or the weights) turned inf/nan; raised before anything non-finite is saved."""
