"""fastscore.models, kept for code written against it: the NCSN score networks live in
fastscore.ncsn.models (the application part of the package)."""
from ..ncsn.models import *  # noqa: F403
from ..ncsn.models import __all__  # noqa: F401
