"""Losses and the Dice metric of :class:`glomseg.GlomUNet`, in TensorFlow.

**Dice.** :func:`dice_metric` is the TensorFlow twin of
:func:`glomseg.dice_coefficient`: masks thresholded at 0.5,
``2 |P & T| / (|P| + |T|)`` per image, 1 when both are empty, one value per image
(Keras averages them over the epoch, so the reported Dice is the mean per-tile
Dice). :func:`dice_loss` is ``1 - soft Dice`` per image with a smoothing term of 1
pixel (:data:`LOSS_SMOOTH`), which keeps empty tiles from dividing by zero; with
``smooth=0`` the soft Dice equals :func:`glomseg.evaluate.soft_dice`.

**Lovasz.** :func:`lovasz_hinge_loss` is the Lovasz hinge of Berman, Triki and
Blaschko (CVPR 2018), a convex surrogate of the Jaccard loss ``1 - IoU`` computed
per image; :func:`bce_lovasz_loss` adds it to the binary cross-entropy, the loss of
the first-placed HuBMAP solution. The network outputs probabilities; the hinge
takes their logits, ``log(p / (1 - p))`` with ``p`` clipped to ``[1e-7, 1 - 1e-7]``.

Every function imports TensorFlow when called, never at import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

__all__ = [
    "LOSS_SMOOTH",
    "LossName",
    "bce_dice_loss",
    "bce_lovasz_loss",
    "custom_objects",
    "dice_loss",
    "dice_metric",
    "loss_function",
    "lovasz_hinge_loss",
]

LossName = Literal["dice", "bce_dice", "bce_lovasz"]
"""The training losses :class:`glomseg.GlomUNet` offers."""

LOSS_SMOOTH = 1.0
"""Smoothing term (in pixels) added to numerator and denominator of the soft Dice loss."""

LOSSES: tuple[str, ...] = get_args(LossName)
_EPSILON = 1e-7  # probability clipping in the cross-entropy, as Keras does


def _per_image_sums(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    """``(sum(p t), sum(p) + sum(t))`` per image, in float32."""
    import tensorflow as tf

    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    axes = tf.range(1, tf.rank(y_pred))
    inter = tf.reduce_sum(y_true * y_pred, axis=axes)
    total = tf.reduce_sum(y_true, axis=axes) + tf.reduce_sum(y_pred, axis=axes)
    return inter, total


def _soft_dice(y_true: Any, y_pred: Any, smooth: float = 0.0) -> Any:
    """Soft Dice per image, ``(2 sum(p t) + s) / (sum(p) + sum(t) + s)``, 1 when both are 0."""
    import tensorflow as tf

    inter, total = _per_image_sums(y_true, y_pred)
    denominator = total + smooth
    safe = tf.where(denominator > 0, denominator, tf.ones_like(denominator))
    return tf.where(denominator > 0, (2.0 * inter + smooth) / safe, tf.ones_like(denominator))


def dice_metric(y_true: Any, y_pred: Any) -> Any:
    """Dice of the masks thresholded at 0.5, one value per image (the Keras metric).

    The TensorFlow twin of :func:`glomseg.evaluate._metrics.dice_coefficient`:
    ``2 |P & T| / (|P| + |T|)`` with ``P = y_pred > 0.5`` and ``T = y_true > 0.5``,
    and 1 when both masks are empty.

    Parameters
    ----------
    y_true, y_pred : tf.Tensor
        Batches of shape ``(n, h, w[, 1])``: masks of 0/1 and probabilities.

    Returns
    -------
    tf.Tensor
        float32, shape ``(n,)``.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.zeros((2, 4, 4, 1), dtype=np.float32)
    >>> truth[0, :2] = 1  # image 0: 8 glomerulus pixels; image 1: none
    >>> pred = np.full((2, 4, 4, 1), 0.9, dtype=np.float32)
    >>> pred[1] = 0.1  # image 1 predicted empty too
    >>> [round(float(d), 3) for d in dice_metric(truth, pred)]  # 2 * 8 / (16 + 8), and 1
    [0.667, 1.0]
    """
    import tensorflow as tf

    truth = tf.cast(tf.cast(y_true, tf.float32) > 0.5, tf.float32)
    pred = tf.cast(tf.cast(y_pred, tf.float32) > 0.5, tf.float32)
    return _soft_dice(truth, pred, 0.0)


def dice_loss(y_true: Any, y_pred: Any) -> Any:
    """``1 - soft Dice`` per image, smoothed by :data:`LOSS_SMOOTH` (the Keras loss).

    Parameters
    ----------
    y_true, y_pred : tf.Tensor
        Batches of shape ``(n, h, w, 1)``: masks of 0/1 and probabilities.

    Returns
    -------
    tf.Tensor
        float32, shape ``(n,)``, in ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.ones((1, 4, 4, 1), dtype=np.float32)
    >>> float(dice_loss(truth, truth)[0]), round(float(dice_loss(truth, 1 - truth)[0]), 3)
    (0.0, 0.941)
    """
    return 1.0 - _soft_dice(y_true, y_pred, LOSS_SMOOTH)


def bce_dice_loss(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy (mean over pixels) plus :func:`dice_loss`, per image.

    Parameters
    ----------
    y_true, y_pred : tf.Tensor
        Batches of shape ``(n, h, w, 1)``: masks of 0/1 and probabilities.

    Returns
    -------
    tf.Tensor
        float32, shape ``(n,)``.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.zeros((1, 4, 4, 1), dtype=np.float32)
    >>> truth[0, :2] = 1
    >>> good, bad = truth * 0.98 + 0.01, 1 - truth
    >>> bool(bce_dice_loss(truth, good)[0] < bce_dice_loss(truth, bad)[0])
    True
    """
    return _bce_plus(y_true, y_pred, dice_loss)


def _bce_plus(y_true: Any, y_pred: Any, region_loss: Callable[[Any, Any], Any]) -> Any:
    """Mean binary cross-entropy per image plus ``region_loss``, on clipped probabilities."""
    import tensorflow as tf

    truth = tf.cast(y_true, tf.float32)
    pred = tf.clip_by_value(tf.cast(y_pred, tf.float32), _EPSILON, 1.0 - _EPSILON)
    bce = -(truth * tf.math.log(pred) + (1.0 - truth) * tf.math.log(1.0 - pred))
    bce = tf.reduce_mean(bce, axis=tf.range(1, tf.rank(bce)))
    return bce + region_loss(truth, pred)


def lovasz_hinge_loss(y_true: Any, y_pred: Any) -> Any:
    """The Lovasz hinge per image: a convex surrogate of the Jaccard loss ``1 - IoU``.

    With logits ``z = log(p / (1 - p))`` and signs ``s = 2 t - 1``, the hinge
    errors ``e = max(0, 1 - z s)`` are sorted in decreasing order and weighted by
    the increments of the Jaccard loss along that order (the Lovasz extension).
    When every error is 0 or 1 (``z = s``: right with margin 1; ``z = 0``: wrong),
    the loss equals the Jaccard loss ``|M| / |T | M|`` of the set ``M`` of wrong
    pixels, ``T`` the true mask.

    Parameters
    ----------
    y_true, y_pred : tf.Tensor
        Batches of shape ``(n, h, w[, 1])``: masks of 0/1 and probabilities.

    Returns
    -------
    tf.Tensor
        float32, shape ``(n,)``, >= 0.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.array([[[1.0, 1.0], [0.0, 0.0]]], dtype=np.float32)
    >>> sure = np.array([[[0.9999, 0.9999], [1e-4, 1e-4]]], dtype=np.float32)
    >>> float(lovasz_hinge_loss(truth, sure)[0])  # confident and right: no loss
    0.0
    >>> half = np.array([[[0.5, 0.9999], [1e-4, 1e-4]]], dtype=np.float32)
    >>> round(float(lovasz_hinge_loss(truth, half)[0]), 3)  # one of 2 pixels wrong: IoU 1/2
    0.5
    """
    import tensorflow as tf

    truth = tf.cast(y_true, tf.float32)
    n = tf.shape(truth)[0]
    truth = tf.reshape(truth, (n, -1))
    pred = tf.clip_by_value(tf.cast(y_pred, tf.float32), _EPSILON, 1.0 - _EPSILON)
    pred = tf.reshape(pred, (n, -1))
    logits = tf.math.log(pred) - tf.math.log(1.0 - pred)
    errors = 1.0 - logits * (2.0 * truth - 1.0)
    sorted_errors, order = tf.math.top_k(errors, k=tf.shape(errors)[1], sorted=True)
    sorted_truth = tf.gather(truth, order, batch_dims=1)
    positives = tf.reduce_sum(sorted_truth, axis=1, keepdims=True)
    intersection = positives - tf.cumsum(sorted_truth, axis=1)
    union = positives + tf.cumsum(1.0 - sorted_truth, axis=1)
    jaccard = 1.0 - intersection / union
    increments = tf.concat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=1)
    return tf.reduce_sum(tf.nn.relu(sorted_errors) * tf.stop_gradient(increments), axis=1)


def bce_lovasz_loss(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy (mean over pixels) plus :func:`lovasz_hinge_loss`, per image.

    Parameters
    ----------
    y_true, y_pred : tf.Tensor
        Batches of shape ``(n, h, w, 1)``: masks of 0/1 and probabilities.

    Returns
    -------
    tf.Tensor
        float32, shape ``(n,)``.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.zeros((1, 4, 4, 1), dtype=np.float32)
    >>> truth[0, :2] = 1
    >>> good, bad = truth * 0.98 + 0.01, 1 - truth
    >>> bool(bce_lovasz_loss(truth, good)[0] < bce_lovasz_loss(truth, bad)[0])
    True
    """
    return _bce_plus(y_true, y_pred, lovasz_hinge_loss)


def loss_function(name: LossName) -> Callable[[Any, Any], Any]:
    """The loss function of a :data:`LossName`."""
    return {"dice": dice_loss, "bce_dice": bce_dice_loss, "bce_lovasz": bce_lovasz_loss}[name]


def custom_objects() -> dict[str, Callable[..., Any]]:
    """The functions a saved model needs to be loaded, by name."""
    return {
        f.__name__: f
        for f in (dice_metric, dice_loss, bce_dice_loss, lovasz_hinge_loss, bce_lovasz_loss)
    }
