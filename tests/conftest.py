"""Suite-wide settings: one torch thread per test process.

The suite's networks are tiny; on a shared 2-core machine, torch's intra-op threads cost
far more in synchronisation than they save (a tiny ensemble step: 130 ms with 2 busy
threads vs 0.9 ms with 1).
"""

import torch

torch.set_num_threads(1)
