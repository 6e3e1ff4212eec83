"""Errors a user can cause. Entry points print their message on one line and exit non-zero.

Every mistake a user can make (a bad config key or value, a missing dataset folder, an unreadable image,
a checkpoint that does not fit) raises a subclass of :class:`UserError`, whose message names what was wrong
and what was expected. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input; the message says what was wrong and what was expected."""


class ConfigError(UserError):
    """A config key that does not exist, or a value of the wrong type or outside its choices."""


def check_choice(key: str, value, choices) -> None:
    """Raise ConfigError naming `key` and the valid `choices` unless `value` is one of them."""
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{key} = {value!r} is not valid; expected one of: {valid}")
