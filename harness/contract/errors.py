"""The one kind of error a user fixes: bad input, told in one line, exit code 2, nothing started."""


class InputError(ValueError):
    """Input the harness cannot use; the message names the value, where it came from, and the fix."""
