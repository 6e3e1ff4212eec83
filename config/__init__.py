"""Configuration: every key with its default (defaults.py), loading and checking (loading.py)."""

from config.defaults import get_defaults
from config.errors import ConfigError, UserError, check_choice
from config.loading import changed_keys, load_config

__all__ = ["ConfigError", "UserError", "changed_keys", "check_choice", "get_defaults", "load_config"]
