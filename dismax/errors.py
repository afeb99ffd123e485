"""Errors meant for people: the CLIs print them as one line and exit with code 2."""


class DismaxError(Exception):
    """A problem the user can fix (bad input, bad config, missing run); printed without traceback."""


class DismaxInputError(DismaxError):
    """An input file or structure is unusable; the message names the file, structure index and problem."""


class DismaxConfigError(DismaxError):
    """A config file or override is invalid; the message lists what is valid."""
