"""edlm: energy-based masked diffusion language models (Xu et al., ICLR 2025).

`edlm.ops` holds the fused ops (masked-token sampling, sequence log-prob, importance resampling);
`edlm.reference` holds their plain PyTorch references.
"""

from . import ops, reference, schedule
from .sampling import sample

__all__ = ["ops", "reference", "sample", "schedule"]
__version__ = "0.1.0"
