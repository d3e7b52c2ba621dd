"""The one exception type that reaches users as a one-line message instead of a traceback."""


class UserError(Exception):
    """A problem with the user's input or machine: the message says what is wrong and what to do."""
