"""Knowledge distillation (Hinton et al., 2015): a small student learns from a larger teacher's softened logits.

The loss per batch is ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(labels,
student)``: the teacher's temperature-softened probabilities carry how it ranks the wrong classes, which a
one-hot label does not; ``T^2`` keeps the soft term's gradients on the scale of the hard one's. The teacher runs in
inference mode on the same augmented batch as the student. The result is a plain Keras model (the student), which
structured pruning and INT8 take as they take any trained model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tf_keras as keras

from model.data import Dataset
from model.train import TrainConfig, fit

DEFAULT_TEMPERATURE = 4.0
DEFAULT_ALPHA = 0.9


class Distiller(keras.Model):
    """Trains ``student`` against ``teacher`` (frozen); ``call`` is the student's, so validation and metrics
    measure the student alone."""

    def __init__(self, student: Any, teacher: Any, temperature: float, alpha: float) -> None:
        super().__init__(name="distiller")
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.temperature = temperature
        self.alpha = alpha
        self.kl = keras.losses.KLDivergence()

    def call(self, x: Any, training: bool = False) -> Any:
        return self.student(x, training=training)

    def distillation_loss(self, x: Any, y: Any, training: bool) -> tuple[Any, Any]:
        """(total loss, student logits) for one batch."""
        import tensorflow as tf

        logits = self.student(x, training=training)
        soft_teacher = tf.nn.softmax(self.teacher(x, training=False) / self.temperature)
        soft_student = tf.nn.softmax(logits / self.temperature)
        soft = self.kl(soft_teacher, soft_student) * self.temperature ** 2
        hard = self.compiled_loss(y, logits, regularization_losses=self.student.losses)
        return self.alpha * soft + (1 - self.alpha) * hard, logits

    def train_step(self, data: Any) -> dict[str, Any]:
        import tensorflow as tf

        x, y = data
        with tf.GradientTape() as tape:
            loss, logits = self.distillation_loss(x, y, training=True)
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        self.compiled_metrics.update_state(y, logits)
        return {"loss": loss, **{m.name: m.result() for m in self.metrics if m.name != "loss"}}


def distill(student: Any, teacher: Any, data: Dataset, cfg: TrainConfig, out: Path,
            temperature: float = DEFAULT_TEMPERATURE, alpha: float = DEFAULT_ALPHA) -> tuple[Any, dict[str, Any]]:
    """Train ``student`` from ``teacher`` on ``data`` (the usual fit: schedule, augmentation, early stopping on
    the student's val accuracy); returns the trained student and the history."""
    distiller = Distiller(student, teacher, temperature, alpha)
    hist = fit(distiller, data, cfg, out)
    return student, hist


def soft_loss(student: Any, teacher: Any, x: np.ndarray, temperature: float = DEFAULT_TEMPERATURE) -> float:
    """The student's mean KL divergence from the teacher's softened predictions on ``x`` (lower: closer)."""
    import tensorflow as tf

    xs = x.astype(np.float32)
    soft_teacher = tf.nn.softmax(teacher(xs, training=False) / temperature)
    soft_student = tf.nn.softmax(student(xs, training=False) / temperature)
    return float(keras.losses.KLDivergence()(soft_teacher, soft_student))
