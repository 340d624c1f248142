"""Filters on what the console shows. conf/hydra/default.yaml puts Quiet and LogOnly on the
console handler Hydra makes for every job, and Quiet on Hydra's own console; training/trainer.py
puts Quiet on Lightning's loggers for runs outside Hydra's logging (tests, the benchmark).

- Quiet drops the lines that say nothing a user acts on: accelerators that are not there, an
  advertisement, Lightning's own bookkeeping (the summary it did not add, the weights it loaded
  after saying which checkpoint it restores), the normal end of fit (the run's summary line
  follows), joblib's whole configuration before a sweep.
- LogOnly keeps records marked `log_only` off the console handler: they go to train.log alone
  (the epoch lines while a progress bar shows the epochs: training/callbacks.py, EpochLines).
"""

import logging
import re

SAYS_NOTHING = re.compile(
    r"^(💡 Tip:|(GPU|TPU|HPU) available: False|Loading `train_dataloader` to estimate"
    r"|`Trainer.fit` stopped: `max_epochs=\d+` reached|Joblib\.Parallel\("
    r"|Trainer already configured with model summary|Loaded model weights from the checkpoint)"
)


class Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not SAYS_NOTHING.match(str(record.msg))


class LogOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "log_only", False)
