"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""


class InfogeomError(Exception):
    """Bad input (config, corpus, checkpoint, ...). Message is one line naming the problem."""
