"""The error a user can act on.

Every layer raises its own subclass of :class:`MinivpnError` for failures that a user causes
(bad arguments, missing privileges, a busy device, a malformed config).  The command line
prints ``minivpn: <message>`` for these and exits non-zero, never with a traceback.  Anything
else escaping to the top is a bug in minivpn.
"""


class MinivpnError(Exception):
    """A failure with a message meant for the user.

    Attributes:
        exit_code: the process exit status the command line uses for it.
    """

    exit_code: int = 1
