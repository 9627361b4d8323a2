"""The data layer: datasets read row by row, checked, and normalised into Examples (never imports masking/training).

Public names are those of core.data.formats; see it for where each lives.
"""

from .formats import *  # noqa: F401,F403
from .formats import __all__  # noqa: F401
