"""``recorder.metrics()`` logged from a training loop: TensorBoard here; Weights & Biases and a
DeepSpeed/OpenRLHF loop are shown in docs/metrics.md (the same few lines)."""

from __future__ import annotations

import recorder
from recorder._log import warn_once


class TensorBoardLogger:
    """Every ``every`` steps, ``recorder.metrics()`` (the figures since the last log) as scalars
    ``<prefix>/<name>`` of a ``torch.utils.tensorboard.SummaryWriter``::

        writer = SummaryWriter(log_dir)
        log = TensorBoardLogger(writer, every=10)
        for step, batch in enumerate(loader):
            ...
            log(step)

    Returns the figures it logged ({} on the other steps). A writer that fails is said once and
    left alone: logging never stops training.
    """

    def __init__(self, writer, every: int = 10, prefix: str = "commtrace") -> None:
        self.writer = writer
        self.every = max(1, int(every))
        self.prefix = prefix
        self.broken = False

    def __call__(self, step: int) -> dict[str, float]:
        if self.broken or step % self.every:
            return {}
        figures = recorder.metrics()
        try:
            for name, value in figures.items():
                self.writer.add_scalar(f"{self.prefix}/{name}", value, step)
        except Exception as exc:
            self.broken = True
            warn_once("tensorboard", "commtrace figures are no longer logged to TensorBoard (%r)", exc)
        return figures
