"""pandora-users: the user service of Pandora Exchange."""

__version__ = "0.1.0"
