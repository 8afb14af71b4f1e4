"""User-facing errors: the CLI prints their message as one line and exits 2, without a traceback."""


class VbonError(Exception):
    """A mistake in the user's input (config, data, model path, reward) with a fix in its message."""


class ConfigError(VbonError):
    """A workflow file that does not match the typed config."""


class ModelLoadError(VbonError):
    """A model or tokenizer that cannot be loaded from the configured name or folder."""


class RewardError(VbonError):
    """A reward scorer that is misconfigured or returned a non-finite score."""


class DataError(VbonError):
    """A prompt source that cannot be read or lacks the configured column."""
