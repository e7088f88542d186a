"""Errors a user can cause. Entry points print them as one line, never as a traceback."""


class RopelabError(Exception):
    """A mistake in the user's input or environment that ropelab can explain in one sentence."""


class UnknownMethodError(RopelabError, KeyError):
    """A RoPE method name that the registry does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so every open stage closes its MLflow run (KILLED) on the
    way out instead of leaving it RUNNING."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum
