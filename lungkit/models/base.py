"""The training step every lungkit model shares, and the hooks `lungkit.training` calls.

A model subclasses `GenerativeModel`, names its losses in `loss_names` (the total first) and
writes its loss maths once in `compute_losses`. This module owns what is the same for all of
them: gradient tape, loss scaling for mixed precision (Keras 3 `optimizer.scale_loss`), the
division of the loss by the number of replicas under `tf.distribute`, per-epoch metric
trackers, a hook (`after_train_step`) for work such as an EMA update, the hooks by
which a model tells the trainer about stages before its own training (`pending_stages`) and
work after it (`after_training`), and `ReplicaSeeds`, through which every training draw
gives each replica its own random numbers. Models never read the trainer's files: the
trainer decides.
"""

import dataclasses
from collections.abc import Callable

import keras
import tensorflow as tf


def replica_id():
    """The replica's id in its sync group under `tf.distribute` (a tensor in a replicated
    step, where it differs per replica), 0 outside one (no strategy, cross-replica context)."""
    context = tf.distribute.get_replica_context()
    return 0 if context is None else context.replica_id_in_sync_group


class ReplicaSeeds(keras.random.SeedGenerator):
    """A `SeedGenerator` view that gives each replica its own draws from `generator`.

    Pass it as the `seed=` of every training draw: `keras.random.normal(shape,
    seed=ReplicaSeeds(self.seed_generator))`.

    Under `tf.distribute` (`MirroredStrategy`, multi-worker) a model's `SeedGenerator` is a
    mirrored variable: every replica reads the same state, so plain draws give every replica
    the same noise for its slice of the batch (keras-team/keras#20612). Each `next()` here
    advances `generator` as a plain draw would and folds the replica id into the seed
    (`tf.random.experimental.stateless_fold_in`): replica `r` draws from `(state, r)`,
    reproducibly from the model's seed. Replica 0, and every draw outside a replicated
    step, uses the state unchanged, so single-device training draws exactly what it drew
    before. It holds no variable of its own (nothing to track, save or restore).

    Args:
        generator: the model's `keras.random.SeedGenerator`.
        replica: the replica id to fold in; default `replica_id()` at draw time.
    """

    def __init__(self, generator, replica=None):  # no super().__init__: no state variable
        self.generator, self.replica = generator, replica
        self.name, self.backend = f"{generator.name}_replicas", generator.backend

    @property
    def state(self):
        return self.generator.state

    def next(self, ordered=True):
        seed = self.generator.next(ordered)
        replica = replica_id() if self.replica is None else self.replica
        static = tf.get_static_value(replica)
        if static is not None and int(static) == 0:
            return seed
        folded = tf.cast(tf.random.experimental.stateless_fold_in(seed, replica), seed.dtype)
        return folded if static is not None else tf.where(replica == 0, seed, folded)


def unpack_batch(data):
    """Splits a batch from `fit()` or `tf.data` into `(images, labels)`.

    Accepts `images`, `(images,)`, `(images, labels)` or `(images, labels, sample_weight)`;
    `labels` is None when the batch carries none.
    """
    if isinstance(data, (tuple, list)):
        images = data[0]
        labels = data[1] if len(data) > 1 else None
        return images, labels
    return data, None


@dataclasses.dataclass
class TrainingStage:
    """A model trained before its owner's own training (e.g. a latent model's autoencoder).

    Attributes:
        name: the stage's name (its run folder inside the owner's).
        model: the Keras model the stage trains (the trainer compiles it).
        epochs: its epochs, or None for as many as the owner's.
        start: called before the stage trains (e.g. make the sub-model trainable).
        finish: called with the training dataset once it has trained (e.g. freeze it and
            measure statistics), or with None when its training failed.
    """

    name: str
    model: keras.Model
    epochs: int | None
    start: Callable[[], None]
    finish: Callable[[object], None]


class GenerativeModel(keras.Model):
    """Base class: a `keras.Model` trained by a loss it computes itself.

    Subclasses set `loss_names` (a tuple, the total loss first) and implement
    `compute_losses(images, labels=None, training=False)` returning one scalar per name:

    ```python
    @keras.saving.register_keras_serializable(package="my_models")
    class Denoiser(GenerativeModel):
        loss_names = ("loss",)

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.net = keras.layers.Conv2D(1, 3, padding="same")

        def compute_losses(self, images, labels=None, training=False):
            noisy = images + 0.1 * keras.random.normal(keras.ops.shape(images))
            return (keras.ops.mean((self.net(noisy) - images) ** 2),)
    ```

    `compile(optimizer=...)`, then `lungkit.training.fit(model, dataset, epochs, out_dir)`
    (or plain `model.fit`) trains it; `record` logs every loss name per epoch.
    """

    loss_names = ("loss",)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.trackers = [keras.metrics.Mean(name=name) for name in self.loss_names]

    @property
    def metrics(self):  # listed here so fit() resets them every epoch
        return self.trackers

    def check_images(self, images, argument="images"):
        """Raises ValueError unless `images` has shape `(batch, image_size, image_size,
        channels)` (for models with those attributes; others accept any shape).

        Works on arrays and on symbolic tensors (checked once, when `fit` traces its step).
        """
        size, channels = getattr(self, "image_size", None), getattr(self, "channels", None)
        if size is None or channels is None:
            return
        shape = tuple(images.shape)
        expected = (size, size, channels)
        if len(shape) != 4 or any(s is not None and s != e
                                  for s, e in zip(shape[1:], expected, strict=True)):
            raise ValueError(
                f"`{argument}` must have shape (batch, {size}, {size}, {channels}) for this "
                f"{type(self).__name__} (image_size={size}, channels={channels}). "
                f"Received: shape={shape}")

    def _check_input_data(self, x, argument):
        """Checks the image shape of arrays or a `tf.data.Dataset` before fit/evaluate run."""
        spec = getattr(x, "element_spec", None)
        if spec is not None:  # a tf.data.Dataset of images or (images, labels)
            if isinstance(spec, (tuple, list)):
                spec = spec[0]
            if getattr(spec, "shape", None) is not None and spec.shape.rank is not None:
                self.check_images(spec, argument)
        elif isinstance(x, (tuple, list)) and x and hasattr(x[0], "shape"):
            self.check_images(x[0], argument)
        elif hasattr(x, "shape") and hasattr(x, "ndim"):
            self.check_images(x, argument)

    def fit(self, x=None, *args, **kwargs):
        """`keras.Model.fit`, after checking that `x` holds images of this model's shape."""
        self._check_input_data(x, "x")
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        """`keras.Model.evaluate`, after checking that `x` holds images of this model's shape."""
        self._check_input_data(x, "x")
        return super().evaluate(x, *args, **kwargs)

    def compute_losses(self, images, labels=None, training=False):
        """Returns a tuple of scalar losses, one per entry of `loss_names`."""
        raise NotImplementedError

    def after_train_step(self):
        """Called after each optimizer update (EMA updates live here)."""

    def pending_stages(self):
        """`TrainingStage`s to train before this model's own training, in order.

        `lungkit.training.fit` trains them when it starts a fresh run; none by default.
        """
        return []

    def restore_stages(self):
        """Called when training resumes or loads a run that passed its stages (their
        results are in the restored weights)."""

    def after_training(self, dataset):
        """Work once training has ended (e.g. fitting an ex-post prior on `dataset`).

        Returns:
            True when the model changed and must be saved again; False by default.
        """
        return False

    def gradient_step(self, images, labels=None, loss_divisor=None):
        """One optimizer update; returns the unscaled losses.

        Args:
            images: the batch, float32 NHWC in [0, 1].
            labels: optional int labels `(batch,)`.
            loss_divisor: what the replica's total loss is divided by before the gradient.
                Default: the number of replicas in sync, which with `fit()` under a strategy
                turns the replicas' summed gradients into the gradient of the mean loss.
        """
        if loss_divisor is None:
            loss_divisor = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            losses = self.compute_losses(images, labels, training=True)
            loss = losses[0] / keras.ops.cast(loss_divisor, losses[0].dtype)
            # LossScaleOptimizer multiplies by its dynamic scale; other optimizers return
            # the loss unchanged. Its apply() divides the gradients back.
            loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.after_train_step()
        return losses

    def train_step(self, data):
        images, labels = unpack_batch(data)
        return self.record(self.gradient_step(images, labels))

    def test_step(self, data):
        images, labels = unpack_batch(data)
        return self.record(self.compute_losses(images, labels, training=False))

    def record(self, losses):
        """Updates the trackers with `losses` and returns their running means."""
        for tracker, value in zip(self.trackers, losses, strict=False):
            tracker.update_state(keras.ops.cast(value, "float32"))
        return {tracker.name: tracker.result() for tracker in self.trackers}
