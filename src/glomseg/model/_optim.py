"""Optimisation pieces of :meth:`glomseg.GlomUNet.fit`: compiling, the cosine schedule, weight EMA.

All are built from the TensorFlow modules passed in, so this module imports
nothing heavy itself.
"""

from __future__ import annotations

from typing import Any

from numpy.typing import NDArray

from glomseg.model._losses import LossName, dice_metric, loss_function

__all__ = ["compile_for_training", "cosine_schedule", "ema_callback"]


def compile_for_training(keras: Any, model: Any, loss: LossName, learning_rate: Any) -> None:
    """Compile with Adam at ``learning_rate`` (a number or a schedule), the loss and Dice."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=loss_function(loss),
        metrics=[dice_metric],
    )


def cosine_schedule(keras: Any, peak: float, total_steps: int, warmup_steps: int) -> Any:
    """Linear warm-up from ``peak / 100`` to ``peak``, then cosine decay to ``peak / 100``."""
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak / 100 if warmup_steps else peak,
        decay_steps=max(1, total_steps - warmup_steps),
        alpha=0.01,
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def ema_callback(keras: Any, tf: Any, momentum: float) -> Any:
    """A callback keeping an exponential moving average of all the model's weights.

    The average (trainable weights and batch-norm statistics alike) is updated
    after every training step with momentum ``min(momentum, (1 + t) / (10 + t))``
    at step ``t``, so the first steps do not anchor it to the random start. It is
    swapped in for validation and for the callbacks that follow it at the end of
    each epoch (checkpoints then save it), and it replaces the weights when
    training ends.
    """

    class ExponentialMovingAverage(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.shadow: list[Any] = []
            self.backup: list[NDArray[Any]] | None = None
            self.step = tf.Variable(0.0, trainable=False, dtype=tf.float32)

        def on_train_begin(self, logs: Any = None) -> None:
            self.shadow = [
                tf.Variable(w, trainable=False, dtype=w.dtype) for w in self.model.weights
            ]
            self.update = tf.function(self._update)

        def _update(self) -> None:
            t = self.step
            m = tf.minimum(tf.constant(momentum, tf.float32), (1.0 + t) / (10.0 + t))
            for average, weight in zip(self.shadow, self.model.weights, strict=True):
                mix = tf.cast(m, average.dtype)
                average.assign(mix * average + (1.0 - mix) * weight)
            self.step.assign_add(1.0)

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.update()

        def swap_in(self) -> None:
            if self.backup is None:
                self.backup = [w.numpy() for w in self.model.weights]
                for weight, average in zip(self.model.weights, self.shadow, strict=True):
                    weight.assign(average)

        def swap_out(self) -> None:
            if self.backup is not None:
                for weight, saved in zip(self.model.weights, self.backup, strict=True):
                    weight.assign(saved)
                self.backup = None

        def on_test_begin(self, logs: Any = None) -> None:
            self.swap_in()

        def on_test_end(self, logs: Any = None) -> None:
            self.swap_out()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.swap_in()

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.swap_out()

        def on_train_end(self, logs: Any = None) -> None:
            self.swap_in()
            self.backup = None  # keep the average

    return ExponentialMovingAverage()
