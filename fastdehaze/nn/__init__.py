"""Drop-in nn.Modules built on fastdehaze.ops (losses, dehazers, feature extractors).

One line per module file (each owner edits only its own line)."""
from .dehazers import *  # noqa: F401,F403  (dcp app)
from .vgg import *  # noqa: F401,F403  (contrastive)
from .losses import *  # noqa: F401,F403  (contrastive / IICL)
from .depth import *  # noqa: F401,F403  (depth_difference)
from .progressive import *  # noqa: F401,F403  (progressive framework, P)
from .synthesis import *  # noqa: F401,F403  (haze synthesis, L)
from .bases import *  # noqa: F401,F403  (built-in bases + ARCHITECTURES, L)
from .depth_models import *  # noqa: F401,F403  (DepthEstimator, DepthGuidedBase, L)
from .files import *  # noqa: F401,F403  (model files)
