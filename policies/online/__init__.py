"""Online finetuning: the offline algorithm keeps training with the same Lightning machinery
while a callback steps the simulator between updates.

- :mod:`.replay`: batches mixing offline and online rows at a fixed or annealed ratio.
- :mod:`.interaction`: the callback that acts in the env, fills the online replay and hands
  every finished episode to a sink (the pipeline appends them to the dataset; policies
  never write to the store themselves).
- :mod:`.safety`: periodic evaluation and the rollback to the best weights when the policy
  falls too far below its pre-finetune level.
"""

from o2o.policies.online.interaction import OnlineInteraction
from o2o.policies.online.replay import MixedReplay, RatioSchedule
from o2o.policies.online.safety import FinetuneMonitor, RollbackRule

__all__ = ["FinetuneMonitor", "MixedReplay", "OnlineInteraction", "RatioSchedule", "RollbackRule"]
