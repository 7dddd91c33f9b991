"""sidemesh-split: weighted traffic splits among subsets or clusters, sticky splits on a
header or cookie, and shadow (mirror) traffic.

``choose(config, key)`` answers where a sticky key lands without running a sidecar (it
is the data path's own choice); ``sidemesh explain`` shows it through the policy's
``explain`` hook.
"""

from importlib.metadata import PackageNotFoundError, version

from .choose import Weights, choose, key_point, sticky_key
from .policy import SplitPolicy

try:
    __version__ = version("sidemesh-split")
except PackageNotFoundError:
    __version__ = "0.0.0"

__all__ = ["SplitPolicy", "Weights", "__version__", "choose", "key_point", "sticky_key"]
